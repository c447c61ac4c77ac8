import { test } from "@jest/globals";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { Worker } from "node:worker_threads";
import { isFlotillaError } from "../../../core/errors";
import { FileKeyProvider, keyFileName } from "../../../core/secagg/file-key-provider";
import { keyProviderContract } from "./key-provider-contract";

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-keys-test-"));

keyProviderContract("FileKeyProvider", async () => {
  const root = tmp();
  return {
    provider: new FileKeyProvider({ dir: path.join(root, "keys") }),
    cleanup: () => fs.rmSync(root, { recursive: true, force: true }),
  };
});

test("key files are 0600 in a 0700 directory, PKCS#8 PEM, one per device, no temp files left", async () => {
  const root = tmp();
  try {
    const dir = path.join(root, "nested", "keys");
    const p = new FileKeyProvider(dir);
    await p.createKey("dev-001");
    await p.createKey("Dev/..//001");
    assert.equal(fs.statSync(dir).mode & 0o777, 0o700);
    const files = fs.readdirSync(dir).sort();
    assert.equal(files.length, 2, files.join(","));
    for (const f of files) {
      assert.match(f, /^[a-z0-9._-]+\.key\.pem$/);
      assert.equal(fs.statSync(path.join(dir, f)).mode & 0o777, 0o600, f);
      assert.match(fs.readFileSync(path.join(dir, f), "utf8"), /^-----BEGIN PRIVATE KEY-----\n/);
    }
    assert.ok(files.includes("dev-001.key.pem"));
    // The mapped name stays inside the directory and is stable.
    assert.equal(path.dirname(p.keyPath("Dev/..//001")), dir);
    assert.equal(keyFileName("Dev/..//001"), keyFileName("Dev/..//001"));
    assert.notEqual(keyFileName("Dev-001"), keyFileName("dev-001"));
    assert.notEqual(keyFileName("a.b"), keyFileName("a_b"));
    // A second provider over the same directory sees the same keys (persistence).
    assert.deepEqual(await new FileKeyProvider(dir).getPublicKey("dev-001"), await p.getPublicKey("dev-001"));
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});

test("a corrupt or wrong-type key file gives E_KEY_CORRUPT, naming the file, on every operation", async () => {
  const root = tmp();
  try {
    const setup = new FileKeyProvider(root);
    await setup.createKey("dev-a");
    await setup.createKey("dev-b");
    fs.writeFileSync(
      setup.keyPath("dev-a"),
      "-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n",
    );
    const { generateKeyPairSync } = await import("node:crypto");
    const rsa = generateKeyPairSync("rsa", { modulusLength: 1024 }).privateKey;
    fs.writeFileSync(setup.keyPath("dev-b"), rsa.export({ format: "pem", type: "pkcs8" }));
    const p = new FileKeyProvider(root); // fresh: nothing cached
    for (const id of ["dev-a", "dev-b"]) {
      for (const op of [
        () => p.getPublicKey(id),
        () => p.createKey(id),
        () => p.signer(id).sign(new Uint8Array([1])),
        () => p.verify(id, new Uint8Array([1]), new Uint8Array(64)),
      ]) {
        await assert.rejects(op(), (e: unknown) => {
          assert.ok(isFlotillaError(e));
          assert.equal(e.code, "E_KEY_CORRUPT");
          assert.ok(e.message.includes(p.keyPath(id)), e.message);
          return true;
        });
      }
    }
    // createKey never overwrites a corrupt key silently: the file is untouched.
    assert.match(fs.readFileSync(p.keyPath("dev-a"), "utf8"), /not base64/);
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});

test("invalid device ids are refused with E_KEY_DEVICE_ID", async () => {
  const p = new FileKeyProvider(tmp());
  for (const id of ["", "x".repeat(129)]) {
    await assert.rejects(p.createKey(id), (e: unknown) => isFlotillaError(e) && e.code === "E_KEY_DEVICE_ID");
  }
  fs.rmSync(p.dir, { recursive: true, force: true });
});

test("concurrent createKey from several threads agrees on one key (link(), not rename())", async () => {
  const dir = tmp();
  try {
    const modulePath = require.resolve("../../../core/secagg/file-key-provider");
    const gate = new Int32Array(new SharedArrayBuffer(4));
    const code = `
      const { workerData, parentPort } = require("node:worker_threads");
      const { FileKeyProvider } = require(workerData.modulePath);
      const gate = new Int32Array(workerData.gate);
      Atomics.wait(gate, 0, 0); // start together
      const p = new FileKeyProvider(workerData.dir);
      (async () => {
        const xs = [];
        for (let i = 0; i < 10; i++) xs.push((await p.createKey("raced-" + i)).x);
        parentPort.postMessage(xs);
      })();
    `;
    const workers = Array.from(
      { length: 4 },
      () => new Worker(code, { eval: true, workerData: { modulePath, dir, gate: gate.buffer } }),
    );
    const xs = workers.map(
      (w) => new Promise<string[]>((resolve, reject) => w.once("message", resolve).once("error", reject)),
    );
    await new Promise((r) => setTimeout(r, 150)); // let every worker reach the gate
    Atomics.store(gate, 0, 1);
    Atomics.notify(gate, 0);
    const results = await Promise.all(xs);
    await Promise.all(workers.map((w) => w.terminate()));
    const reader = new FileKeyProvider(dir);
    const onDisk = await Promise.all(
      results[0].map(async (_, i) => (await reader.getPublicKey(`raced-${i}`)).x),
    );
    for (const r of results) assert.deepEqual(r, onDisk);
    assert.equal(fs.readdirSync(dir).length, 10, "one file per device, no temp files left");
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
