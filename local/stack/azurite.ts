/**
 * Azurite (the npm package) as a child process: the Blob Storage stand-in of the local stack. Started by `npm start`
 * and by the tests; in production the same code talks to Azure Blob Storage.
 */
import { spawn, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { FlotillaError } from "../../core/errors";

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

export interface Azurite {
  readonly blobEndpoint: string;
  /** The Azurite child process (for memory accounting). */
  readonly pid: number | undefined;
  stop(): Promise<void>;
}

/** Spawns Azurite's blob service in memory on a free (or given) port; resolves when it listens. */
export async function startAzurite(opts: { port?: number } = {}): Promise<Azurite> {
  const port = opts.port ?? (await freePort());
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-azurite-"));
  const main = require.resolve("azurite/dist/src/blob/main.js");
  const child: ChildProcess = spawn(
    process.execPath,
    [main, "--blobHost", "127.0.0.1", "--blobPort", String(port), "--inMemoryPersistence", "--loose"].concat([
      "--skipApiVersionCheck",
      "--silent",
      "--disableTelemetry",
    ]),
    { cwd: dir, stdio: ["ignore", "pipe", "pipe"] },
  );
  let out = "";
  child.stdout?.on("data", (d: Buffer) => (out += d.toString()));
  child.stderr?.on("data", (d: Buffer) => (out += d.toString()));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child.once("exit", r));
      child.kill("SIGTERM");
      await Promise.race([exited, new Promise((r) => setTimeout(r, 3000))]);
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    }
    fs.rmSync(dir, { recursive: true, force: true });
  };
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null)
      throw new FlotillaError("E_AZURITE_START", `azurite exited: ${out.trim().split("\n")[0]}`);
    const ok = await new Promise<boolean>((resolve) => {
      const c = net.connect(port, "127.0.0.1", () => {
        c.destroy();
        resolve(true);
      });
      c.once("error", () => resolve(false));
    });
    if (ok) break;
    if (Date.now() > deadline) {
      await stop();
      throw new FlotillaError("E_AZURITE_START", "azurite did not listen within 20 s");
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return { blobEndpoint: `http://127.0.0.1:${port}/devstoreaccount1`, pid: child.pid, stop };
}
