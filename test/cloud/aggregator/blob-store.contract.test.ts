import { afterAll, beforeAll, describe, test } from "@jest/globals";
import assert from "node:assert/strict";
import {
  AzureBlobStore,
  MemoryBlobStore,
  devStorageConnectionString,
  isConflict,
  updateJson,
  getJson,
  type BlobStore,
} from "../../../cloud/aggregator/src/store/blob-store";
import { startAzurite, type Azurite } from "./support";

function contract(name: string, make: () => BlobStore) {
  describe(`BlobStore contract: ${name}`, () => {
    test("put/get round-trips bytes and returns a fresh ETag per write", async () => {
      const s = make();
      const bytes = new Uint8Array([0, 1, 2, 250, 255]);
      const e1 = await s.put("a/b/one.bin", bytes);
      const got = await s.get("a/b/one.bin");
      assert.deepEqual(got && [...got.bytes], [...bytes]);
      assert.equal(got?.etag, e1);
      const e2 = await s.put("a/b/one.bin", new Uint8Array([9]));
      assert.notEqual(e2, e1);
      assert.deepEqual([...((await s.get("a/b/one.bin"))?.bytes ?? [])], [9]);
      assert.equal(await s.get("a/b/missing"), undefined);
      assert.equal(await s.exists("a/b/one.bin"), true);
      assert.equal(await s.exists("a/b/missing"), false);
    });

    test("ifNoneMatch '*' lets only the first writer in", async () => {
      const s = make();
      await s.put("c/x", new Uint8Array([1]), { ifNoneMatch: "*" });
      await assert.rejects(s.put("c/x", new Uint8Array([2]), { ifNoneMatch: "*" }), (e) => isConflict(e));
      assert.deepEqual([...((await s.get("c/x"))?.bytes ?? [])], [1]);
    });

    test("ifMatch fails on a stale ETag and on a missing blob", async () => {
      const s = make();
      const e1 = await s.put("d/x", new Uint8Array([1]));
      const e2 = await s.put("d/x", new Uint8Array([2]), { ifMatch: e1 });
      await assert.rejects(s.put("d/x", new Uint8Array([3]), { ifMatch: e1 }), (e) => isConflict(e));
      await s.put("d/x", new Uint8Array([4]), { ifMatch: e2 });
      assert.deepEqual([...((await s.get("d/x"))?.bytes ?? [])], [4]);
      await assert.rejects(s.put("d/none", new Uint8Array([1]), { ifMatch: e2 }), (e) => isConflict(e));
    });

    test("list by prefix (sorted), delete", async () => {
      const s = make();
      for (const n of ["p/2", "p/1", "p/sub/3", "q/1"]) await s.put(n, new Uint8Array([1]));
      assert.deepEqual(await s.list("p/"), ["p/1", "p/2", "p/sub/3"]);
      assert.deepEqual(await s.list("p/sub/"), ["p/sub/3"]);
      assert.equal(await s.delete("p/1"), true);
      assert.equal(await s.delete("p/1"), false);
      assert.deepEqual(await s.list("p/"), ["p/2", "p/sub/3"]);
    });

    test("delete with ifMatch deletes only the blob as read; a changed one is E_STORE_CONFLICT", async () => {
      const s = make();
      const e1 = await s.put("lease/x", new Uint8Array([1]));
      const e2 = await s.put("lease/x", new Uint8Array([2]), { ifMatch: e1 });
      await assert.rejects(s.delete("lease/x", { ifMatch: e1 }), (e) => isConflict(e));
      assert.ok(await s.exists("lease/x"));
      assert.equal(await s.delete("lease/x", { ifMatch: e2 }), true);
      assert.equal(await s.delete("lease/x", { ifMatch: e2 }), false);
    });

    test("listInfo: names by prefix (sorted) with each blob's last write time", async () => {
      const s = make();
      const t0 = Date.now() - 60_000;
      for (const n of ["li/b", "li/a", "other/c"]) await s.put(n, new Uint8Array([1]));
      const info = await s.listInfo("li/");
      assert.deepEqual(
        info.map((i) => i.name),
        ["li/a", "li/b"],
      );
      for (const i of info)
        assert.ok(i.lastModified > t0 && i.lastModified < Date.now() + 60_000, `${i.lastModified}`);
    });

    test("updateJson: concurrent read-modify-writes lose nothing", async () => {
      const s = make();
      await Promise.all(
        Array.from({ length: 8 }, (_, i) =>
          updateJson<{ items: number[] }>(s, "j/doc.json", (cur) => ({ items: [...(cur?.items ?? []), i] })),
        ),
      );
      const doc = await getJson<{ items: number[] }>(s, "j/doc.json");
      assert.deepEqual([...(doc?.value.items ?? [])].sort(), [0, 1, 2, 3, 4, 5, 6, 7]);
    });
  });
}

contract("memory", () => new MemoryBlobStore());

describe("AzureBlobStore on Azurite", () => {
  let azurite: Azurite;
  let n = 0;
  beforeAll(async () => {
    azurite = await startAzurite();
  });
  afterAll(async () => {
    await azurite?.stop();
  });
  contract("azure (azurite)", () => {
    return new AzureBlobStore({
      connectionString: devStorageConnectionString(azurite.blobEndpoint),
      containerName: `c${process.pid}-${++n}`,
    });
  });

  test("url() is a read SAS a plain HTTP GET can download; it expires", async () => {
    const s = new AzureBlobStore({
      connectionString: devStorageConnectionString(azurite.blobEndpoint),
      containerName: "sas-test",
    });
    const bytes = new Uint8Array(new Float32Array([1.5, -2, 3]).buffer);
    await s.put("jobs/j/models/0.f32", bytes);
    const url = await s.url("jobs/j/models/0.f32", 5);
    assert.match(url, /sig=/);
    assert.match(url, /sp=r/);
    const res = await fetch(url);
    assert.equal(res.status, 200);
    assert.deepEqual(new Uint8Array(await res.arrayBuffer()), bytes);
    const noSas = await fetch(url.split("?")[0]);
    assert.notEqual(noSas.status, 200, "the container is private: without the SAS the GET fails");
    const expired = await s.url("jobs/j/models/0.f32", -10);
    assert.equal((await fetch(expired)).status, 403);
  });
});
