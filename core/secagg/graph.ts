/**
 * The SecAgg+ masking graph (Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead",
 * CCS 2020, §3-4): instead of every pair of devices masking (Bonawitz et al. CCS 2017: the complete graph), each
 * device masks with and shares its secrets among only its k = O(log n) neighbours in a random k-regular graph.
 *
 * The graph is the Harary graph H(n, k) (for even k: the ring where each node is adjacent to the k/2 nodes on
 * either side; Harary 1962) drawn over a random relabelling of the participants, as in Bell et al.'s and Flower's
 * SecAgg+: the participants are sorted, then permuted by a Fisher-Yates shuffle (Knuth, TAOCP vol. 2, Algorithm
 * 3.4.2P) whose random indices come from the AES-256-CTR keystream under HKDF-SHA256(graphSeed,
 * info "flotilla-secagg-graph-v1"), drawn without modulo bias by rejection sampling. Every device recomputes the same
 * graph from the participant list and the 32-byte seed the server relays, and checks the neighbours it was sent.
 * k >= n-1 gives the complete graph (classic SecAgg). Odd k < n-1 is not supported (validateParams rejects it).
 *
 * Trust note: the server draws the seed. A malicious server could grind seeds to place devices it controls around
 * a target; the threshold t > k/2 and the per-device checks bound what it can reconstruct, but a verifiable,
 * unbiased seed (e.g. commit-reveal with the devices) would be needed against an actively malicious server.
 */
import { createCipheriv, hkdfSync } from "node:crypto";
import { fail } from "../errors";

export const GRAPH_INFO = "flotilla-secagg-graph-v1";

/** Uniform 32-bit words from the AES-256-CTR keystream of HKDF(seed). */
class KeystreamWords {
  private buf = new Uint32Array(0);
  private pos = 0;
  private readonly cipher;
  constructor(seed: Uint8Array) {
    const key = new Uint8Array(hkdfSync("sha256", seed, new Uint8Array(0), GRAPH_INFO, 32));
    this.cipher = createCipheriv("aes-256-ctr", key, new Uint8Array(16));
    key.fill(0);
  }
  next(): number {
    if (this.pos >= this.buf.length) {
      const ks = this.cipher.update(new Uint8Array(4096));
      this.buf = new Uint32Array(1024);
      for (let i = 0; i < 1024; i++) this.buf[i] = ks.readUInt32LE(4 * i);
      this.pos = 0;
    }
    return this.buf[this.pos++];
  }
  /** Uniform integer in [0, bound) (bound <= 2^32), by rejection: no modulo bias. */
  below(bound: number): number {
    const limit = 4294967296 - (4294967296 % bound); // largest multiple of bound <= 2^32
    for (;;) {
      const r = this.next();
      if (r < limit) return r % bound;
    }
  }
}

/** The seeded random relabelling: the sorted participants in Fisher-Yates shuffled order. */
export function permuteParticipants(participants: readonly string[], seed: Uint8Array): string[] {
  if (seed.byteLength !== 32) fail("E_SECAGG_GRAPH", `graph seed must be 32 bytes, got ${seed.byteLength}`);
  const order = sortedUnique(participants);
  const ks = new KeystreamWords(seed);
  for (let i = order.length - 1; i > 0; i--) {
    const j = ks.below(i + 1);
    const tmp = order[i];
    order[i] = order[j];
    order[j] = tmp;
  }
  return order;
}

/**
 * Each participant's neighbours in H(n, k) over the seeded relabelling: a symmetric map, every list sorted,
 * k-regular for even k < n-1, complete for k >= n-1.
 */
export function neighbourGraph(
  participants: readonly string[],
  k: number,
  seed: Uint8Array,
): Map<string, string[]> {
  if (!Number.isInteger(k) || k < 1)
    fail("E_SECAGG_GRAPH", `neighbour count must be a positive integer, got ${k}`);
  const n = participants.length;
  const graph = new Map<string, string[]>();
  if (k >= n - 1) {
    const all = sortedUnique(participants);
    if (seed.byteLength !== 32) fail("E_SECAGG_GRAPH", `graph seed must be 32 bytes, got ${seed.byteLength}`);
    for (const id of all)
      graph.set(
        id,
        all.filter((o) => o !== id),
      );
    return graph;
  }
  if (k % 2 !== 0)
    fail("E_SECAGG_GRAPH", `neighbour count must be even when below n-1, got k=${k} with n=${n}`);
  const ring = permuteParticipants(participants, seed);
  const half = k / 2;
  for (let p = 0; p < n; p++) {
    const nb: string[] = [];
    for (let d = 1; d <= half; d++) nb.push(ring[(p + d) % n], ring[(p - d + n) % n]);
    graph.set(ring[p], nb.sort(compareIds));
  }
  return graph;
}

/** Device ids order by UTF-16 code units (Array.prototype.sort's default, and `<`). */
export function compareIds(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function sortedUnique(participants: readonly string[]): string[] {
  const s = [...participants].sort(compareIds);
  for (let i = 1; i < s.length; i++)
    if (s[i] === s[i - 1]) fail("E_SECAGG_GRAPH", `duplicate participant '${s[i]}'`);
  return s;
}
