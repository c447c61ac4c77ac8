/**
 * An in-memory SecAgg+ round (tests and the bench): one SecAggServer and one SecAggClient per device, every message
 * passed through JSON (the masked vector through a copy of its bytes) to prove the messages survive a JSON
 * transport, with scripted dropouts and hooks for a curious or tampering server.
 *
 * A device with dropAt = s vanishes at step s: it does not answer s or anything after (advertise: never advertises;
 * share: advertised, sends no shares; mask: shared keys, sends no input; unmask: sent its input, reveals nothing).
 * A client that fails a step (a FlotillaError: bad signature, failed decryption, refused unmask...) is recorded and
 * treated as vanished from that step on, like a real device answering with a failure frame; a message the server
 * rejects is recorded and the device is simply not part of that step's set.
 */
import type { JsonWebKey } from "node:crypto";
import { isFlotillaError } from "../errors";
import { SecAggClient, type IdentityVerifier } from "./client";
import { LocalSigner } from "./identity";
import type { PrgName } from "./prg";
import { SecAggServer } from "./server";
import {
  SECAGG_STEPS,
  type IdentitySigner,
  type MaskInputRequest,
  type SecAggParams,
  type SecAggResult,
  type SecAggSession,
  type SecAggStep,
  type ShareKeysRequest,
  type UnmaskRequest,
} from "./types";

export interface SecAggDeviceInput {
  readonly update: Float32Array;
  /** Aggregation weight (training samples), a positive integer. */
  readonly weight: number;
}

/** What the server sends at each step, by device (mutable in onServerAction: the driver sends what is there). */
export interface ServerActionContext {
  readonly server: SecAggServer;
  readonly requests: Map<string, ShareKeysRequest | MaskInputRequest | UnmaskRequest>;
  readonly clients: ReadonlyMap<string, SecAggClient>;
}

export interface SecAggRoundOptions {
  readonly session: SecAggSession;
  readonly params: SecAggParams;
  readonly updates: ReadonlyMap<string, SecAggDeviceInput>;
  /** Identity signers by device, with `identityKeys`; a device without one gets a fresh LocalSigner. */
  readonly signers?: ReadonlyMap<string, IdentitySigner>;
  readonly identityKeys?: ReadonlyMap<string, JsonWebKey>;
  /** The step at which a device vanishes (does not answer it or anything after). */
  readonly dropAt?: ReadonlyMap<string, SecAggStep>;
  readonly graphSeed?: Uint8Array;
  readonly prg?: PrgName;
  /** The server's signature check (tests: a server that accepts anything, to see the clients refuse). */
  readonly serverVerify?: IdentityVerifier;
  /** Test hook: each device's fixed-point encoded update (before masking). */
  readonly onEncoded?: (deviceId: string, encoded: Uint32Array) => void;
  /** Test hook: a device's message on its way to the server (return the message to deliver). */
  readonly onDeviceMessage?: (step: SecAggStep, deviceId: string, message: unknown) => unknown;
  /**
   * Test hook: called when the server is about to act at `step`: for "advertise" before closing the step (requests
   * empty), for the other steps with the requests it is about to send for that step.
   */
  readonly onServerAction?: (step: SecAggStep, ctx: ServerActionContext) => void;
}

export interface SecAggDeviceReport {
  /** JSON bytes sent to the server (the masked vector counts 4 bytes per value). */
  bytesUp: number;
  /** JSON bytes received from the server. */
  bytesDown: number;
  /** Client compute across its steps, ms. */
  computeMs: number;
  /** The step a client failed and its error code. */
  clientError?: { readonly step: SecAggStep; readonly code: string; readonly message: string };
  /** A message of this device the server rejected. */
  serverRejected?: { readonly step: SecAggStep; readonly code: string; readonly message: string };
}

export interface SecAggRoundReport {
  readonly result: SecAggResult;
  readonly devices: ReadonlyMap<string, SecAggDeviceReport>;
  readonly server: SecAggServer;
}

/** Runs one round in memory; throws E_SECAGG_ABORTED (from the server) when the round cannot complete. */
export async function runSecAggRound(o: SecAggRoundOptions): Promise<SecAggRoundReport> {
  const ids = [...o.updates.keys()];
  const signers = new Map<string, IdentitySigner>();
  const keys = new Map<string, JsonWebKey>();
  for (const id of ids) {
    const s = o.signers?.get(id);
    const k = o.identityKeys?.get(id);
    if (s && k) {
      signers.set(id, s);
      keys.set(id, k);
    } else {
      const g = LocalSigner.generate(id);
      signers.set(id, g.signer);
      keys.set(id, g.publicKey);
    }
  }
  const devices = new Map<string, SecAggDeviceReport>(
    ids.map((id) => [id, { bytesUp: 0, bytesDown: 0, computeMs: 0 }]),
  );
  const gone = new Set<string>(); // vanished or failed
  const vanishes = (id: string, step: SecAggStep): boolean => {
    if (gone.has(id)) return true;
    const at = o.dropAt?.get(id);
    if (at !== undefined && SECAGG_STEPS.indexOf(step) >= SECAGG_STEPS.indexOf(at)) {
      gone.add(id);
      return true;
    }
    return false;
  };
  const timed = <T>(id: string, step: SecAggStep, fn: () => T): T | undefined => {
    const t0 = performance.now();
    try {
      return fn();
    } catch (e) {
      if (!isFlotillaError(e)) throw e;
      devices.get(id)!.clientError = { step, code: e.code, message: e.message };
      gone.add(id);
      return undefined;
    } finally {
      devices.get(id)!.computeMs += performance.now() - t0;
    }
  };
  const down = <T>(id: string, msg: T): T => {
    const wire = JSON.stringify(msg);
    devices.get(id)!.bytesDown += Buffer.byteLength(wire);
    return JSON.parse(wire) as T;
  };
  const up = <T>(step: SecAggStep, id: string, msg: T): T => {
    const m = (o.onDeviceMessage ? o.onDeviceMessage(step, id, msg) : msg) as T;
    const { masked, ...rest } = m as T & { masked?: Uint32Array };
    const wire = JSON.stringify(rest);
    const r = devices.get(id)!;
    r.bytesUp += Buffer.byteLength(wire);
    const back = JSON.parse(wire) as Record<string, unknown>;
    if (masked instanceof Uint32Array) {
      const bytes = new Uint8Array(masked.buffer, masked.byteOffset, masked.byteLength).slice();
      r.bytesUp += bytes.byteLength;
      back.masked = new Uint32Array(bytes.buffer);
    }
    return back as T;
  };
  const deliver = (step: SecAggStep, id: string, fn: () => void): void => {
    try {
      fn();
    } catch (e) {
      if (!isFlotillaError(e)) throw e;
      devices.get(id)!.serverRejected = { step, code: e.code, message: e.message };
    }
  };

  const server = new SecAggServer(o.session, o.params, ids, {
    length: o.updates.values().next().value?.update.length ?? 0,
    identityKey: (id) => keys.get(id),
    graphSeed: o.graphSeed,
    verify: o.serverVerify,
    prg: o.prg,
  });
  const clients = new Map<string, SecAggClient>();
  const clientOptions = (id: string) => ({
    prg: o.prg,
    onEncoded: o.onEncoded ? (e: Uint32Array) => o.onEncoded!(id, e) : undefined,
  });
  const act = (step: SecAggStep, requests: ServerActionContext["requests"]) =>
    o.onServerAction?.(step, { server, requests, clients });

  // Step 1: advertise.
  for (const id of ids) {
    if (vanishes(id, "advertise")) continue;
    const t0 = performance.now();
    let started;
    try {
      started = await SecAggClient.start(
        o.session,
        id,
        o.updates.get(id)!.weight,
        signers.get(id)!,
        clientOptions(id),
      );
    } catch (e) {
      if (!isFlotillaError(e)) throw e;
      devices.get(id)!.clientError = { step: "advertise", code: e.code, message: e.message };
      gone.add(id);
      continue;
    } finally {
      devices.get(id)!.computeMs += performance.now() - t0;
    }
    clients.set(id, started.client);
    const ad = up("advertise", id, started.advertisement);
    deliver("advertise", id, () => server.addAdvertisement(ad));
  }
  act("advertise", new Map());

  // Step 2: share keys.
  const shareReqs: ServerActionContext["requests"] = server.closeAdvertise();
  act("share", shareReqs);
  for (const [id, req] of shareReqs) {
    if (vanishes(id, "share")) continue;
    const r = down(id, req as ShareKeysRequest);
    const resp = timed(id, "share", () => clients.get(id)!.shareKeys(r));
    if (resp) deliver("share", id, () => server.addShares(up("share", id, resp)));
  }

  // Step 3: masked input.
  const maskReqs: ServerActionContext["requests"] = server.closeShares();
  act("mask", maskReqs);
  for (const [id, req] of maskReqs) {
    if (vanishes(id, "mask")) continue;
    const r = down(id, req as MaskInputRequest);
    const mi = timed(id, "mask", () => clients.get(id)!.maskInput(r, o.updates.get(id)!.update));
    if (mi) deliver("mask", id, () => server.addMaskedInput(up("mask", id, mi)));
  }

  // Step 4: unmask.
  const unmaskReqs: ServerActionContext["requests"] = server.closeMasked();
  act("unmask", unmaskReqs);
  for (const [id, req] of unmaskReqs) {
    if (vanishes(id, "unmask")) continue;
    const r = down(id, req as UnmaskRequest);
    const resp = timed(id, "unmask", () => clients.get(id)!.unmask(r));
    if (resp) deliver("unmask", id, () => server.addUnmaskResponse(up("unmask", id, resp)));
  }
  const result = server.finish();
  return { result, devices, server };
}
