/**
 * Renders an IoT Edge deployment template (deployment-manifests/*.template.json) into deployable JSON.
 *
 *   node dist/scripts/render-manifest.js deployment-manifests/deployment.template.json --platform amd64 \
 *     --set CONTAINER_REGISTRY=myacr.azurecr.io --out out/deployment.amd64.json
 *
 * - `${VAR}` comes from `--set VAR=value` (wins) or the environment; `${VAR:-default}` falls back to `default`
 *   when VAR is unset or empty.
 * - `${MODULES.<name>}` is the image of modules/<name>/module.json for `--platform` (default amd64):
 *   `<image.repository>:<image.tag.version>-<platform>`, the tag iotedgedev and the VS Code extension build;
 *   `${MODULES.<name>.<platform>}` names the platform explicitly.
 * - `//` and `/* *\/` comments are stripped; the template's `$schema-template` key is dropped.
 * - `createOptions` written as an object is serialised and split into the 512-character chunks IoT Edge reads
 *   (`createOptions`, `createOptions01` … `createOptions07`: 4,096 characters at most).
 * - Any placeholder left unresolved fails the whole render with one line naming every one of them.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { parseArgs } from "node:util";
import { FlotillaError, fail, isFlotillaError } from "../core/errors";

/** IoT Edge splits a module's createOptions into chunks of this many characters. */
export const CREATE_OPTIONS_CHUNK_CHARS = 512;
/** `createOptions` plus `createOptions01` … `createOptions07`. */
export const CREATE_OPTIONS_MAX_CHUNKS = 8;
export const CREATE_OPTIONS_MAX_CHARS = CREATE_OPTIONS_CHUNK_CHARS * CREATE_OPTIONS_MAX_CHUNKS;

const REPO_ROOT = path.resolve(__dirname, "..", "..");
const DEFAULT_PLATFORM = "amd64";
const PLACEHOLDER = /\$\{([^}]*)\}/g;
const VAR_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const MODULE_REF = /^MODULES\.([A-Za-z0-9_-]+)(?:\.([A-Za-z0-9_.-]+))?$/;
const CREATE_OPTIONS_KEY = /^createOptions(0[1-7])?$/;

/** The parts of a module.json (Azure IoT Edge module project convention) the renderer reads. */
export interface ModuleProject {
  image: {
    repository: string;
    tag: { version: string; platforms: Record<string, string> };
  };
}

export interface RenderOptions {
  /** Platform key of module.json `image.tag.platforms` for `${MODULES.<name>}`. Default "amd64". */
  platform?: string;
  /** Folder holding `<name>/module.json`. Default: the repository's modules/. */
  modulesDir?: string;
  /** Module projects by name, used instead of reading `modulesDir` (tests). */
  modules?: Record<string, ModuleProject>;
}

export type Vars = Readonly<Record<string, string | undefined>>;

/** Removes `//` line and `/* *\/` block comments outside JSON strings. */
export function stripJsonComments(text: string): string {
  let out = "";
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    if (c === '"') {
      const start = i++;
      while (i < text.length && text[i] !== '"') i += text[i] === "\\" ? 2 : 1;
      out += text.slice(start, ++i);
    } else if (c === "/" && text[i + 1] === "/") {
      while (i < text.length && text[i] !== "\n") i++;
    } else if (c === "/" && text[i + 1] === "*") {
      const end = text.indexOf("*/", i + 2);
      if (end < 0) fail("E_MANIFEST_SYNTAX", "unterminated /* comment");
      // Keep line breaks so JSON.parse positions still point at the right line.
      out += text.slice(i, end + 2).replace(/[^\n]/g, " ");
      i = end + 2;
    } else {
      out += c;
      i++;
    }
  }
  return out;
}

/** Splits serialised createOptions into IoT Edge's chunk keys: createOptions, createOptions01, … */
export function splitCreateOptions(json: string, where = "createOptions"): Record<string, string> {
  if (json.length > CREATE_OPTIONS_MAX_CHARS) {
    fail(
      "E_MANIFEST_CREATE_OPTIONS",
      `${where} is ${json.length} characters; IoT Edge takes at most ${CREATE_OPTIONS_MAX_CHARS}`,
    );
  }
  const chunks: Record<string, string> = {};
  for (let i = 0; i * CREATE_OPTIONS_CHUNK_CHARS < json.length || i === 0; i++) {
    const key = i === 0 ? "createOptions" : `createOptions${String(i).padStart(2, "0")}`;
    chunks[key] = json.slice(i * CREATE_OPTIONS_CHUNK_CHARS, (i + 1) * CREATE_OPTIONS_CHUNK_CHARS);
  }
  return chunks;
}

/** Reads modules/<name>/module.json, or undefined when there is none. */
export function readModuleProject(modulesDir: string, name: string): ModuleProject | undefined {
  const file = path.join(modulesDir, name, "module.json");
  if (!fs.existsSync(file)) return undefined;
  try {
    return JSON.parse(fs.readFileSync(file, "utf8")) as ModuleProject;
  } catch (e) {
    return fail("E_MANIFEST_MODULE", `${file}: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * Renders a deployment template: substitutes placeholders, strips comments and `$schema-template`, and
 * chunks createOptions. Throws FlotillaError E_MANIFEST_UNRESOLVED naming every placeholder it could not fill.
 */
export function renderManifest(template: object | string, vars: Vars, opts: RenderOptions = {}): object {
  const platform = opts.platform ?? DEFAULT_PLATFORM;
  const modulesDir = opts.modulesDir ?? path.join(REPO_ROOT, "modules");
  let doc: unknown;
  if (typeof template === "string") {
    try {
      doc = JSON.parse(stripJsonComments(template));
    } catch (e) {
      if (isFlotillaError(e)) throw e;
      fail("E_MANIFEST_SYNTAX", `template is not JSON: ${(e as Error).message}`, { cause: e });
    }
  } else {
    doc = structuredClone(template);
  }
  if (typeof doc !== "object" || doc === null || Array.isArray(doc)) {
    fail("E_MANIFEST_SYNTAX", "template must be a JSON object");
  }
  delete (doc as Record<string, unknown>)["$schema-template"];

  const unresolved = new Set<string>();
  const projects = new Map<string, ModuleProject | undefined>();
  const project = (name: string): ModuleProject | undefined => {
    if (!projects.has(name))
      projects.set(name, opts.modules ? opts.modules[name] : readModuleProject(modulesDir, name));
    return projects.get(name);
  };

  const expand = (text: string): string =>
    text.replace(PLACEHOLDER, (whole: string, body: string) => {
      const value = resolve(body);
      if (value === undefined) unresolved.add(whole);
      return value ?? whole;
    });

  const resolve = (body: string): string | undefined => {
    const moduleRef = MODULE_REF.exec(body);
    if (moduleRef) {
      const [, name, explicitPlatform] = moduleRef;
      const image = project(name)?.image;
      const tagPlatform = explicitPlatform ?? platform;
      if (!image?.repository || !image.tag?.version || !image.tag.platforms?.[tagPlatform]) return undefined;
      return `${expand(image.repository)}:${image.tag.version}-${tagPlatform}`;
    }
    const sep = body.indexOf(":-");
    const name = sep < 0 ? body : body.slice(0, sep);
    if (!VAR_NAME.test(name)) return undefined;
    const value = vars[name];
    if (value !== undefined && (sep < 0 || value !== "")) return value;
    return sep < 0 ? undefined : body.slice(sep + 2);
  };

  const walk = (node: unknown, where: string): unknown => {
    if (typeof node === "string") return expand(node);
    if (Array.isArray(node)) return node.map((item, i) => walk(item, `${where}[${i}]`));
    if (typeof node !== "object" || node === null) return node;
    const out: Record<string, unknown> = {};
    for (const [key, value] of Object.entries(node)) out[expand(key)] = walk(value, `${where}["${key}"]`);
    const options = out.createOptions;
    const serialised = typeof options === "string" ? options : JSON.stringify(options);
    if (
      options === undefined ||
      (typeof options === "string" && options.length <= CREATE_OPTIONS_CHUNK_CHARS)
    ) {
      return out;
    }
    // An object, or one string too long for a single chunk: serialise and chunk it here.
    if (Object.keys(out).some((k) => k !== "createOptions" && CREATE_OPTIONS_KEY.test(k))) {
      fail(
        "E_MANIFEST_CREATE_OPTIONS",
        `${where}: createOptions to be chunked cannot be combined with createOptions01…`,
      );
    }
    const chunked: Record<string, unknown> = {};
    for (const [key, value] of Object.entries(out)) {
      if (key === "createOptions")
        Object.assign(chunked, splitCreateOptions(serialised, `${where}.createOptions`));
      else chunked[key] = value;
    }
    return chunked;
  };

  const rendered = walk(doc, "$") as object;
  if (unresolved.size > 0) {
    const missingModules = [...unresolved]
      .map((p) => MODULE_REF.exec(p.slice(2, -1)))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => `${m[1]} (${m[2] ?? platform})`);
    const hint = missingModules.length
      ? `; no module.json image for platform: ${[...new Set(missingModules)].join(", ")}`
      : "";
    throw new FlotillaError(
      "E_MANIFEST_UNRESOLVED",
      `unresolved placeholders: ${[...unresolved].sort().join(", ")}${hint}`,
    );
  }
  return rendered;
}

const USAGE =
  "usage: render-manifest TEMPLATE [--platform amd64|arm64v8|amd64.debug] [--set VAR=value]... [--out FILE]";

/** The CLI: returns the process exit code. */
export function main(argv: string[], env: Vars = process.env): number {
  try {
    let parsed;
    try {
      parsed = parseArgs({
        args: argv,
        allowPositionals: true,
        options: {
          platform: { type: "string" },
          set: { type: "string", multiple: true },
          out: { type: "string" },
          "modules-dir": { type: "string" },
          help: { type: "boolean", short: "h" },
        },
      });
    } catch (e) {
      return fail("E_MANIFEST_ARGS", `${(e as Error).message}; ${USAGE}`, { cause: e });
    }
    const { values, positionals } = parsed;
    if (values.help) {
      process.stdout.write(`${USAGE}\n`);
      return 0;
    }
    if (positionals.length !== 1) fail("E_MANIFEST_ARGS", `expected one template file; ${USAGE}`);
    const vars: Record<string, string | undefined> = { ...env };
    for (const assignment of values.set ?? []) {
      const eq = assignment.indexOf("=");
      if (eq <= 0 || !VAR_NAME.test(assignment.slice(0, eq))) {
        fail("E_MANIFEST_ARGS", `--set expects VAR=value, got "${assignment}"`);
      }
      vars[assignment.slice(0, eq)] = assignment.slice(eq + 1);
    }
    const templateFile = positionals[0];
    let text: string;
    try {
      text = fs.readFileSync(templateFile, "utf8");
    } catch (e) {
      return fail(
        "E_MANIFEST_TEMPLATE",
        `cannot read ${templateFile}: ${(e as NodeJS.ErrnoException).code}`,
        { cause: e },
      );
    }
    const rendered = renderManifest(text, vars, {
      platform: values.platform,
      modulesDir: values["modules-dir"],
    });
    const json = `${JSON.stringify(rendered, null, 2)}\n`;
    if (values.out) {
      fs.mkdirSync(path.dirname(path.resolve(values.out)), { recursive: true });
      fs.writeFileSync(values.out, json);
    } else {
      process.stdout.write(json);
    }
    return 0;
  } catch (e) {
    if (!isFlotillaError(e)) throw e;
    process.stderr.write(`render-manifest: ${e.code}: ${e.message.replace(/\s*\n\s*/g, " ")}\n`);
    return 1;
  }
}

if (require.main === module) process.exitCode = main(process.argv.slice(2));
