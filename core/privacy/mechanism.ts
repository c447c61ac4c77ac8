/**
 * The Gaussian mechanism's two halves for DP-FedAvg (McMahan, Ramage, Talwar, Zhang, "Learning Differentially
 * Private Recurrent Language Models", ICLR 2018, Algorithm 1): clip each device's update to L2 norm C, then add
 * N(0, σ²) noise. Noise comes from the operating system's CSPRNG (crypto.randomFillSync); a seeded generator is
 * available for tests only, since predictable noise is no privacy at all (Mironov, "On Significance of the Least
 * Significant Bits for Differential Privacy", CCS 2012, is why we never use Math.random either).
 */
import { randomFillSync } from "node:crypto";
import { Rng } from "../data/rng";
import { fail } from "../errors";

/** L2 norm of a vector, accumulated in double precision. */
export function l2Norm(v: Float32Array): number {
  let s = 0;
  for (let i = 0; i < v.length; i++) s += v[i]! * v[i]!;
  return Math.sqrt(s);
}

/**
 * Scales `v` in place so its L2 norm is at most `clip` (v · min(1, C/‖v‖)). Returns the norm before clipping
 * and whether the vector was scaled down.
 */
export function clipL2(v: Float32Array, clip: number): { norm: number; clipped: boolean } {
  if (!(clip > 0) || !Number.isFinite(clip))
    fail("E_DP_CONFIG", `clip norm must be a positive number, got ${clip}`);
  const norm = l2Norm(v);
  if (!Number.isFinite(norm)) fail("E_DP_INPUT", "update has a non-finite L2 norm (NaN or Infinity in it)");
  if (norm <= clip) return { norm, clipped: false };
  const s = clip / norm;
  for (let i = 0; i < v.length; i++) v[i]! *= s;
  return { norm, clipped: true };
}

/** Standard normal samples: Box–Muller over 53-bit uniforms from the CSPRNG (or a seeded Rng in tests). */
export class GaussianNoise {
  private readonly rng: Rng | undefined;
  private pool = new Uint32Array(0);
  private at = 0;
  private spare: number | null = null;

  /** `seed` is for tests: with it the noise is reproducible and therefore gives no privacy. */
  constructor(seed?: number) {
    this.rng = seed === undefined ? undefined : new Rng(seed);
  }

  /** Uniform in (0, 1) with 53 random bits. */
  private uniform(): number {
    if (this.rng) {
      let u = 0;
      while (u === 0) u = this.rng.next();
      return u;
    }
    for (;;) {
      if (this.at + 2 > this.pool.length) {
        this.pool = randomFillSync(new Uint32Array(16384));
        this.at = 0;
      }
      const hi = this.pool[this.at++]! >>> 5; // 27 bits
      const lo = this.pool[this.at++]! >>> 6; // 26 bits
      const u = (hi * 67108864 + lo) / 9007199254740992;
      if (u > 0) return u;
    }
  }

  /** One N(0, 1) sample. */
  next(): number {
    if (this.spare !== null) {
      const s = this.spare;
      this.spare = null;
      return s;
    }
    const r = Math.sqrt(-2 * Math.log(this.uniform()));
    const t = 2 * Math.PI * this.uniform();
    this.spare = r * Math.sin(t);
    return r * Math.cos(t);
  }

  /** Adds N(0, std²) to every element of `v` in place. */
  addTo(v: Float32Array | Float64Array, std: number): void {
    if (!(std >= 0) || !Number.isFinite(std)) fail("E_DP_CONFIG", `noise std must be ≥ 0, got ${std}`);
    if (std === 0) return;
    for (let i = 0; i < v.length; i++) v[i]! += std * this.next();
  }
}
