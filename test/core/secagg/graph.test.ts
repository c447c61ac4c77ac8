import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { neighbourGraph, permuteParticipants } from "../../../core/secagg/graph";
import { errorCode } from "../../helpers/errors";

const ids = (n: number) => Array.from({ length: n }, (_, i) => `dev-${String(i).padStart(3, "0")}`);
const seed = (b: number) => new Uint8Array(32).fill(b);

function checkGraph(g: Map<string, string[]>, all: string[], k: number): void {
  assert.equal(g.size, all.length);
  for (const [id, nbs] of g) {
    assert.equal(nbs.length, k, `${id} has ${nbs.length} neighbours, want ${k}`);
    assert.equal(new Set(nbs).size, k, "no repeated neighbour");
    assert.ok(!nbs.includes(id), "no self loop");
    assert.deepEqual(nbs, [...nbs].sort(), "sorted");
    for (const j of nbs) assert.ok(g.get(j)!.includes(id), `${id}-${j} is symmetric`);
  }
}

test("the Harary graph is symmetric, k-regular, deterministic from the seed", () => {
  for (const n of [3, 5, 10, 33, 100]) {
    for (const k of [2, 4, 8, 14]) {
      if (k >= n - 1) continue;
      const all = ids(n);
      const g = neighbourGraph(all, k, seed(1));
      checkGraph(g, all, k);
      assert.deepEqual(neighbourGraph([...all].reverse(), k, seed(1)), g, "input order does not matter");
      if (n >= 10) assert.notDeepEqual(neighbourGraph(all, k, seed(2)), g, "another seed, another graph");
    }
  }
});

test("k >= n-1 gives the complete graph (classic SecAgg)", () => {
  const all = ids(7);
  for (const k of [6, 7, 50]) {
    const g = neighbourGraph(all, k, seed(3));
    checkGraph(g, all, 6);
  }
  // an odd k is allowed only as n-1
  checkGraph(neighbourGraph(ids(8), 7, seed(1)), ids(8), 7);
});

test("the relabelling is a permutation, and neighbourhoods vary with the seed about uniformly", () => {
  const all = ids(21);
  const counts = new Map<string, number>();
  const trials = 400;
  for (let s = 0; s < trials; s++) {
    const sd = new Uint8Array(32);
    sd[0] = s & 0xff;
    sd[1] = s >> 8;
    const perm = permuteParticipants(all, sd);
    assert.deepEqual([...perm].sort(), all);
    for (const j of neighbourGraph(all, 4, sd).get(all[0])!) counts.set(j, (counts.get(j) ?? 0) + 1);
  }
  // Each other device is a neighbour of dev-000 with probability 4/20: expected 80 of 400 (sd ~ 8).
  assert.equal(counts.size, 20);
  for (const [j, c] of counts) assert.ok(c > 40 && c < 120, `${j}: ${c}`);
});

test("bad graphs are rejected with E_SECAGG_GRAPH", () => {
  assert.equal(
    errorCode(() => neighbourGraph(ids(10), 3, seed(1))),
    "E_SECAGG_GRAPH",
  );
  assert.equal(
    errorCode(() => neighbourGraph(["a", "b", "a", "c"], 2, seed(1))),
    "E_SECAGG_GRAPH",
  );
  assert.equal(
    errorCode(() => neighbourGraph(ids(10), 4, new Uint8Array(16))),
    "E_SECAGG_GRAPH",
  );
  assert.equal(
    errorCode(() => neighbourGraph(ids(10), 0, seed(1))),
    "E_SECAGG_GRAPH",
  );
});
