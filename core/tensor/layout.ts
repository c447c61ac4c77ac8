import { createHash } from "node:crypto";
import { fail } from "../errors";

/** Where one named tensor sits inside a flat Float32Array of model weights. */
export interface LayoutEntry {
  readonly name: string;
  readonly shape: readonly number[];
  readonly offset: number;
  readonly size: number;
}

/**
 * Weights travel as one flat Float32Array plus this layout. `hash` is the sha256 (hex) of the names and shapes, so
 * two parties agree on an architecture by comparing one string; an update with another layout hash is rejected.
 */
export interface WeightLayout {
  readonly entries: readonly LayoutEntry[];
  readonly totalSize: number;
  readonly hash: string;
}

export function makeLayout(tensors: readonly { name: string; shape: readonly number[] }[]): WeightLayout {
  let offset = 0;
  const entries: LayoutEntry[] = [];
  for (const t of tensors) {
    const size = t.shape.reduce((a, b) => a * b, 1);
    entries.push({ name: t.name, shape: [...t.shape], offset, size });
    offset += size;
  }
  const canonical = JSON.stringify(entries.map((e) => [e.name, e.shape]));
  const hash = createHash("sha256").update(canonical).digest("hex");
  return { entries, totalSize: offset, hash };
}

export function checkLayout(expected: WeightLayout, hash: string, length: number): void {
  if (hash !== expected.hash) {
    fail(
      "E_MODEL_LAYOUT",
      `weight layout ${hash.slice(0, 12)} does not match the model's ${expected.hash.slice(0, 12)}`,
    );
  }
  if (length !== expected.totalSize) {
    fail("E_MODEL_LAYOUT", `weights have ${length} values, the layout needs ${expected.totalSize}`);
  }
}

/** sha256 (hex) of a weight vector's bytes: identifies one global model version. */
export function weightsHash(w: Float32Array): string {
  return createHash("sha256")
    .update(new Uint8Array(w.buffer, w.byteOffset, w.byteLength))
    .digest("hex");
}
