/**
 * The KeyProvider contract: every implementation (file-backed, Key Vault through the real SDK) must pass it.
 * Register it inside a test file: `keyProviderContract("file", async () => ({ provider, cleanup }))`.
 */
import { describe, test } from "@jest/globals";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { isFlotillaError } from "../../../core/errors";
import { verifyIdentitySignature, type KeyProvider } from "../../../core/secagg/identity";

export interface ContractSubject {
  provider: KeyProvider;
  cleanup?: () => Promise<void> | void;
}

/** A device id unique to one test, so cases never share keys even when the provider is shared. */
function freshId(tag: string): string {
  return `contract-${tag}-${randomBytes(4).toString("hex")}`;
}

async function rejectsWithCode(p: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(isFlotillaError(e), `expected a FlotillaError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    assert.ok(!e.message.includes("\n"), "one-line message");
    return true;
  });
}

export function keyProviderContract(name: string, make: () => Promise<ContractSubject>): void {
  describe(`KeyProvider contract: ${name}`, () => {
    const withProvider = (fn: (p: KeyProvider) => Promise<void>) => async () => {
      const s = await make();
      try {
        await fn(s.provider);
      } finally {
        await s.cleanup?.();
      }
    };

    test(
      "createKey is idempotent and returns a public P-256 JWK without private members",
      withProvider(async (p) => {
        const id = freshId("idem");
        const first = await p.createKey(id);
        assert.deepEqual(Object.keys(first).sort(), ["crv", "kty", "x", "y"]);
        assert.equal(first.kty, "EC");
        assert.equal(first.crv, "P-256");
        assert.equal(Buffer.from(first.x as string, "base64url").length, 32);
        assert.equal(Buffer.from(first.y as string, "base64url").length, 32);
        assert.equal((first as { d?: string }).d, undefined);
        const again = await p.createKey(id);
        assert.deepEqual(again, first, "second createKey returns the same key");
        assert.deepEqual(await p.getPublicKey(id), first);
        // Concurrent creates of a new device agree on one key.
        const id2 = freshId("race");
        const [a, b] = await Promise.all([p.createKey(id2), p.createKey(id2)]);
        assert.deepEqual(a, b);
        assert.deepEqual(await p.getPublicKey(id2), a);
      }),
    );

    test(
      "getPublicKey, signing and verify of an unknown device fail with E_KEY_NOT_FOUND",
      withProvider(async (p) => {
        const id = freshId("unknown");
        await rejectsWithCode(p.getPublicKey(id), "E_KEY_NOT_FOUND");
        await rejectsWithCode(p.signer(id).sign(new Uint8Array([1])), "E_KEY_NOT_FOUND");
        await rejectsWithCode(p.verify(id, new Uint8Array([1]), new Uint8Array(64)), "E_KEY_NOT_FOUND");
      }),
    );

    test(
      "signatures verify with verifyIdentitySignature and provider.verify; tampering fails both",
      withProvider(async (p) => {
        const id = freshId("sign");
        const jwk = await p.createKey(id);
        const signer = p.signer(id);
        assert.equal(signer.deviceId, id);
        const data = new TextEncoder().encode(`advertisement of ${id}`);
        const sig = await signer.sign(data);
        assert.equal(sig.byteLength, 64, "ES256 r||s");
        assert.equal(verifyIdentitySignature(jwk, data, sig), true);
        assert.equal(await p.verify(id, data, sig), true);

        const otherData = new Uint8Array(data);
        otherData[0] ^= 1;
        assert.equal(verifyIdentitySignature(jwk, otherData, sig), false);
        assert.equal(await p.verify(id, otherData, sig), false);
        const badSig = new Uint8Array(sig);
        badSig[40] ^= 0x80;
        assert.equal(verifyIdentitySignature(jwk, data, badSig), false);
        assert.equal(await p.verify(id, data, badSig), false);
        assert.equal(await p.verify(id, data, sig.subarray(0, 63)), false, "truncated signature");

        // Empty and larger inputs sign too (the provider hashes whatever it is given).
        for (const d of [new Uint8Array(0), randomBytes(100_000)]) {
          const s = await signer.sign(d);
          assert.equal(verifyIdentitySignature(jwk, d, s), true);
        }
      }),
    );

    test(
      "two devices have different keys; one device's signature does not verify as another's",
      withProvider(async (p) => {
        const a = freshId("a");
        const b = freshId("b");
        const [ka, kb] = await Promise.all([p.createKey(a), p.createKey(b)]);
        assert.notDeepEqual(ka, kb);
        const data = new Uint8Array([1, 2, 3]);
        const sigA = await p.signer(a).sign(data);
        assert.equal(verifyIdentitySignature(kb, data, sigA), false);
        assert.equal(await p.verify(b, data, sigA), false);
        assert.equal(await p.verify(a, data, sigA), true);
      }),
    );

    test(
      "device ids that need mapping (case, punctuation, length) get distinct, stable keys",
      withProvider(async (p) => {
        const suffix = randomBytes(3).toString("hex");
        const ids = [
          `Dev-${suffix}`,
          `dev-${suffix}`,
          `dev.${suffix}`,
          `dev_${suffix}`,
          `d${suffix}`.repeat(17),
        ];
        const keys = await Promise.all(ids.map((id) => p.createKey(id)));
        const xs = new Set(keys.map((k) => k.x));
        assert.equal(xs.size, ids.length, "no two ids share a key");
        for (const [i, id] of ids.entries()) assert.deepEqual(await p.getPublicKey(id), keys[i]);
      }),
    );
  });
}
