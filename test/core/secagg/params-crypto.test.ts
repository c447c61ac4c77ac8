import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { defaultParams, validateParams } from "../../../core/secagg/params";
import {
  advertisementBytes,
  agree,
  decryptSharePair,
  deriveMaskSeed,
  deriveShareKey,
  encryptSharePair,
  fromB64u,
  generateX25519,
  toB64u,
  x25519PrivateKeyFromRaw,
  x25519PrivateKeyRaw,
  x25519PublicKeyRaw,
} from "../../../core/secagg/crypto";
import type { SecAggParams } from "../../../core/secagg/types";
import { isFlotillaError } from "../../../core/errors";
import { errorCode } from "../../helpers/errors";

test("defaultParams: k = 2 ceil(log2 n) capped at n-1, t = floor(k/2) + 1", () => {
  assert.deepEqual(defaultParams(100), { neighbours: 14, threshold: 8, clipRange: 8, modulusBits: 32 });
  assert.deepEqual(defaultParams(1000), { neighbours: 20, threshold: 11, clipRange: 8, modulusBits: 32 });
  assert.equal(defaultParams(5).neighbours, 4);
  assert.equal(defaultParams(3).neighbours, 2);
  assert.equal(defaultParams(3).threshold, 2);
  for (const n of [3, 4, 5, 6, 7, 10, 17, 64, 100, 1000, 5000]) validateParams(defaultParams(n), n);
  assert.equal(
    errorCode(() => defaultParams(2)),
    "E_SECAGG_PARAMS",
  );
});

test("validateParams rejects unsafe or unusable parameters with one-line E_SECAGG_PARAMS", () => {
  const ok: SecAggParams = { neighbours: 8, threshold: 5, clipRange: 8, modulusBits: 32 };
  validateParams(ok, 20);
  validateParams({ ...ok, neighbours: 9, threshold: 5 }, 10); // k = n-1, odd: classic
  const bad: [Partial<SecAggParams>, number][] = [
    [{ threshold: 4 }, 20], // t = k/2: two disjoint sets of t neighbours exist
    [{ threshold: 9 }, 20], // t > k
    [{ threshold: 5.5 }, 20],
    [{ neighbours: 7, threshold: 4 }, 20], // odd k below n-1
    [{ neighbours: 1, threshold: 1 }, 20],
    [{ clipRange: 0 }, 20],
    [{ clipRange: Infinity }, 20],
    [{ clipRange: NaN }, 20],
    [{ modulusBits: 16 as 32 }, 20],
    [{}, 2], // n < 3
    [{ neighbours: 8, threshold: 5 }, 5], // effective k = 4 < t
  ];
  for (const [p, n] of bad) {
    try {
      validateParams({ ...ok, ...p }, n);
      assert.fail(`accepted ${JSON.stringify(p)} with n=${n}`);
    } catch (e) {
      assert.ok(isFlotillaError(e) && e.code === "E_SECAGG_PARAMS", String(e));
      assert.ok(!e.message.includes("\n"));
    }
  }
});

test("X25519: raw keys round-trip through PKCS#8, agreement is symmetric, derivations are bound to the session", () => {
  const a = generateX25519();
  const b = generateX25519();
  assert.equal(a.publicKey.byteLength, 32);
  const raw = x25519PrivateKeyRaw(a.privateKey);
  assert.equal(raw.byteLength, 32);
  assert.deepEqual(x25519PublicKeyRaw(x25519PrivateKeyFromRaw(raw)), a.publicKey);
  const ab = agree(a.privateKey, b.publicKey);
  assert.deepEqual(ab, agree(b.privateKey, toB64u(a.publicKey)));
  const s = { jobId: "job", round: 3 };
  assert.deepEqual(deriveMaskSeed(ab, s), deriveMaskSeed(agree(b.privateKey, a.publicKey), s));
  assert.notDeepEqual(deriveMaskSeed(ab, s), deriveMaskSeed(ab, { jobId: "job", round: 4 }));
  assert.notDeepEqual(deriveMaskSeed(ab, s), deriveMaskSeed(ab, { jobId: "job2", round: 3 }));
  assert.notDeepEqual(deriveMaskSeed(ab, s), deriveShareKey(ab, s));
  // A low-order point (all zeros) is refused.
  assert.equal(
    errorCode(() => agree(a.privateKey, new Uint8Array(32))),
    "E_SECAGG_KEY",
  );
  assert.equal(
    errorCode(() => agree(a.privateKey, new Uint8Array(31))),
    "E_SECAGG_KEY",
  );
  assert.equal(
    errorCode(() => x25519PrivateKeyFromRaw(new Uint8Array(16))),
    "E_SECAGG_KEY",
  );
  // Not an X25519 key at all
  const ec = generateKeyPairSync("ec", { namedCurve: "P-256" });
  assert.throws(() => agree(ec.privateKey, b.publicKey));
});

test("share encryption: AES-256-GCM round trip; any change to key, AAD or ciphertext fails authentication", () => {
  const key = new Uint8Array(randomBytes(32));
  const s = { jobId: "j", round: 1 };
  const p1 = new Uint8Array(randomBytes(34));
  const p2 = new Uint8Array(randomBytes(34));
  const enc = encryptSharePair(key, s, "a", "b", p1, p2);
  assert.equal(fromB64u(enc.nonce, "nonce").byteLength, 12);
  assert.equal(fromB64u(enc.ciphertext, "ct").byteLength, 4 + 68 + 16);
  const dec = decryptSharePair(key, s, enc);
  assert.deepEqual(dec.selfMaskShare, p1);
  assert.deepEqual(dec.maskKeyShare, p2);
  const flip = (t: string) => {
    const b = Buffer.from(t, "base64url");
    b[5] ^= 1;
    return b.toString("base64url");
  };
  const cases = [
    () => decryptSharePair(new Uint8Array(randomBytes(32)), s, enc),
    () => decryptSharePair(key, { jobId: "j", round: 2 }, enc),
    () => decryptSharePair(key, { jobId: "k", round: 1 }, enc),
    () => decryptSharePair(key, s, { ...enc, from: "b", to: "a" }),
    () => decryptSharePair(key, s, { ...enc, to: "c" }),
    () => decryptSharePair(key, s, { ...enc, ciphertext: flip(enc.ciphertext) }),
    () => decryptSharePair(key, s, { ...enc, nonce: flip(enc.nonce) }),
    () => decryptSharePair(key, s, { ...enc, ciphertext: "!!" }),
    () => decryptSharePair(key, s, { ...enc, ciphertext: enc.ciphertext.slice(0, 20) }),
  ];
  for (const c of cases) assert.equal(errorCode(c), "E_SECAGG_DECRYPT");
});

test("advertisementBytes is the documented canonical encoding", () => {
  const ad = { jobId: "j|1", round: 2, deviceId: "dev", encryptionKey: "AA", maskingKey: "BB", weight: 7 };
  assert.equal(
    Buffer.from(advertisementBytes(ad)).toString("utf8"),
    'flotilla-secagg-advert-v1["j|1",2,"dev","AA","BB",7]',
  );
  assert.notDeepEqual(advertisementBytes(ad), advertisementBytes({ ...ad, weight: 8 }));
  assert.equal(
    errorCode(() => fromB64u("ab+c", "x")),
    "E_SECAGG_MESSAGE",
  );
});
