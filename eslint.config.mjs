// ESLint flat config: typescript-eslint recommended rules, Prettier owns formatting.
import js from "@eslint/js";
import tseslint from "typescript-eslint";
import prettier from "eslint-config-prettier";

// Layers (docs/architecture.md, "Layers"): which top-level folder may import which. Relative imports are matched by
// the folder they climb to ("../../modules/..."), packages by name. Tests (test/), scripts (scripts/) and the local
// tools (local/) may import every layer and are not restricted; test/layering.test.ts checks the rules.
const LAYER_DOCS = "see docs/architecture.md, Layers";
const AZURE_SDKS = {
  regex: "^(@azure/|@azure-rest/|azure-iot-|azure-iothub$)",
  message: `core/ is pure TypeScript with no Azure import; Azure-backed implementations live in azure/ (${LAYER_DOCS}).`,
};
/** A pattern forbidding relative imports of the given top-level folders. */
const folders = (names, who) => ({
  regex: `^(\\.\\./)+(${names.join("|")})(/|$)`,
  message: `${who} may not import ${names.map((n) => `${n}/`).join(", ")} (${LAYER_DOCS}).`,
});
/**
 * The same patterns for what no-restricted-imports does not see: require("..."), import("...") and the type
 * `import("...").T` (it does see `import x = require("...")`). esquery regexes cannot contain "/": \u002F.
 */
const syntax = (patterns) =>
  patterns.flatMap(({ regex, message }) => {
    const re = `/${regex.replaceAll("/", "\\u002F")}/`;
    return [
      `CallExpression[callee.name="require"][arguments.0.value=${re}]`,
      `ImportExpression[source.value=${re}]`,
      `TSImportType[argument.literal.value=${re}]`,
    ].map((selector) => ({ selector, message }));
  });
const layer = (files, patterns) => ({
  files,
  rules: {
    "no-restricted-imports": ["error", { patterns }],
    "no-restricted-syntax": ["error", ...syntax(patterns)],
  },
});

export default tseslint.config(
  { ignores: ["dist/**", "node_modules/**", "scratch/**", "out/**", ".flotilla/**", "bench-out/**"] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  prettier,
  {
    languageOptions: {
      globals: {
        console: "readonly",
        process: "readonly",
        require: "readonly",
        module: "writable",
        __dirname: "readonly",
        Buffer: "readonly",
        setTimeout: "readonly",
        clearTimeout: "readonly",
        performance: "readonly",
        URL: "readonly",
      },
    },
    rules: {
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_" }],
      "@typescript-eslint/no-require-imports": "off",
    },
  },
  layer(["core/**/*.ts"], [AZURE_SDKS, folders(["azure", "modules", "cloud", "local"], "core/")]),
  layer(["azure/**/*.ts"], [folders(["modules", "cloud", "local"], "azure/")]),
  layer(["modules/**/*.ts"], [folders(["cloud", "local"], "modules/")]),
  layer(["cloud/**/*.ts"], [folders(["modules", "local"], "cloud/")]),
);
