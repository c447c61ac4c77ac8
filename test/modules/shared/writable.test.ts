import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { FlotillaError } from "../../../core/errors";
import { createLogger } from "../../../core/log";
import { parsePolicyValue } from "../../../core/fleet/policy";
import { ModuleHost } from "../../../modules/shared/host";
import { isWritableAck, type AckOutcome } from "../../../modules/shared/pnp";
import {
  booleanProperty,
  customProperty,
  numberProperty,
  WritableProperties,
  type PropertySpecs,
  type WritableOptions,
} from "../../../modules/shared/writable";
import { withContext } from "../../helpers/context";
import { FakeModuleClient } from "../update-queue/fake-client";
import { until } from "../update-queue/helpers";

/**
 * The writable-property framework (modules/shared/writable.ts): Plug and Play acknowledgements (200/202/400/500),
 * null → default, unknown keys refused, the Function's keys ignored, last good values kept and restored, next-round
 * properties pending while a round runs, and no operator value able to throw out of it.
 */

function specs() {
  return {
    size: numberProperty({
      name: "size",
      schema: "integer",
      minimum: 1,
      maximum: 100,
      description: "a size",
      default: 10,
    }),
    on: booleanProperty({ name: "on", description: "a switch", default: false }),
    threads: numberProperty({
      name: "threads",
      schema: "integer",
      minimum: 0,
      maximum: 64,
      description: "threads for the next round",
      default: 0,
      applies: "next-round",
    }),
    metered: customProperty<number>({
      schema: "long",
      description: "a policy value",
      default: 0,
      parse: (v) => parsePolicyValue("meteredMaxUploadBytes", v) ?? 0,
    }),
  } satisfies PropertySpecs;
}

interface Sent {
  outcomes: Record<string, AckOutcome>;
  version: number;
}

function framework<S extends PropertySpecs = ReturnType<typeof specs>>(
  opts: Partial<WritableOptions<S>> & { specs?: S } = {},
) {
  const sent: Sent[] = [];
  const applied: [string, unknown, unknown][] = [];
  const logged: [string, string][] = [];
  let busy = false;
  const w = new WritableProperties<S>({
    specs: (opts.specs ?? specs()) as S,
    cloudKeys: ["acks", "openRounds"],
    ack: (outcomes, version) => void sent.push({ outcomes: { ...outcomes }, version }),
    apply: (name, value, previous) => void applied.push([name, value, previous]),
    busy: () => busy,
    log: (level, line) => void logged.push([level, line]),
    ...opts,
  });
  return {
    w,
    sent,
    applied,
    logged,
    setBusy: (b: boolean) => (busy = b),
    /** The outcomes of the last ack call. */
    last: () => sent.at(-1)?.outcomes ?? {},
  };
}

test("a valid value is applied and acked 200 at the desired $version", () => {
  const f = framework();
  f.w.onTwin({ $version: 3, size: 42, on: true });
  assert.deepEqual(f.sent, [
    {
      outcomes: { size: { value: 42, status: 200 }, on: { value: true, status: 200 } },
      version: 3,
    },
  ]);
  assert.equal(f.w.get("size"), 42);
  assert.deepEqual(f.applied, [
    ["size", 42, 10],
    ["on", true, false],
  ]);
  f.w.onPatch({ $version: 4, size: 43 });
  assert.deepEqual(f.last(), { size: { value: 43, status: 200 } });
  assert.equal(f.sent.at(-1)?.version, 4);
});

test("a refused value is acked 400 with the reason and the last good value, which stays in effect", () => {
  const f = framework();
  f.w.onTwin({ $version: 1, size: 42 });
  for (const bad of [0, 101, 4.5, "42", true, [42], { value: 42 }, "NaN", "Infinity", "1e3", ""]) {
    f.w.onPatch({ $version: 2, size: bad });
    const o = f.last().size;
    assert.equal(o.status, 400, `size ${JSON.stringify(bad)}`);
    assert.equal(o.value, 42, "the last good value");
    assert.match(o.description ?? "", /^E_PROPERTY_INVALID: size /);
    assert.equal(f.w.get("size"), 42);
  }
  f.w.onPatch({ $version: 3, on: "yes", metered: -1 });
  assert.equal(f.last().on.status, 400);
  assert.equal(f.last().on.value, false);
  assert.equal(f.last().metered.status, 400);
  assert.match(f.last().metered.description ?? "", /meteredMaxUploadBytes -1 is out of range/);
  assert.deepEqual(f.applied, [["size", 42, 10]], "nothing refused reached the module");
  assert.ok(f.logged.some(([level, line]) => level === "warn" && /desired size = .* refused/.test(line)));
});

test("null (the operator deleted the property) is the default, applied and acked 200", () => {
  const f = framework();
  f.w.onTwin({ $version: 1, size: 42, metered: 5000 });
  f.w.onPatch({ $version: 2, size: null, metered: null });
  assert.deepEqual(f.last(), {
    size: { value: 10, status: 200 },
    metered: { value: 0, status: 200 },
  });
  assert.equal(f.w.get("size"), 10);
  assert.deepEqual(f.applied.slice(-2), [
    ["size", 10, 42],
    ["metered", 0, 5000],
  ]);
});

test("an unknown key is acked 400 E_PROPERTY_UNKNOWN naming the known ones; Object.prototype's names too", () => {
  // `__proto__` (a JSON key like any other) cannot be written back through plain objects: logged, never acked.
  const f = framework();
  const desired = JSON.parse(
    '{"$version": 5, "colour": "red", "constructor": 1, "toString": "x", "__proto__": {"size": 99}, ' +
      '"hasOwnProperty": null, "size": 20}',
  ) as Record<string, unknown>;
  f.w.onTwin(desired);
  const o = f.last();
  for (const name of ["colour", "constructor", "toString", "hasOwnProperty"]) {
    assert.ok(Object.prototype.hasOwnProperty.call(o, name), `${name} is acked`);
    assert.equal(o[name].status, 400, name);
    assert.equal(o[name].value, null, name);
    assert.match(
      o[name].description ?? "",
      /^E_PROPERTY_UNKNOWN: unknown property '.+' \(known: size, on, threads, metered\)$/,
    );
  }
  assert.deepEqual(o.size, { value: 20, status: 200 });
  assert.equal(Object.getPrototypeOf(o), Object.prototype, "the outcomes' prototype is untouched");
  assert.ok(!Object.prototype.hasOwnProperty.call(o, "__proto__"));
  assert.ok(
    f.logged.some(([, line]) => line === "desired '__proto__' is ignored: it cannot be acknowledged"),
  );
  assert.equal(f.w.get("size"), 20);
});

test("the Function's keys and $-keys are neither acked nor refused; a reserved key is logged only", () => {
  const f = framework({ reservedKeys: ["updateQueue"] });
  f.w.onTwin({
    $version: 7,
    $metadata: { $lastUpdated: "x" },
    acks: ["u1"],
    openRounds: { job: 3 },
    updateQueue: { depth: 1 },
  });
  assert.deepEqual(f.sent, [{ outcomes: {}, version: 7 }]);
  assert.ok(f.logged.some(([, line]) => line.includes("'updateQueue' is ignored")));
});

test("the last good values come back from the module's own reported acks at the first twin read only", () => {
  const f = framework();
  const reported = {
    size: { value: 42, ac: 200, av: 3 },
    on: { value: true, ac: 400, av: 4, ad: "the last good value was true" },
    threads: { value: 8, ac: 202, av: 5 },
    metered: { value: "garbage", ac: 200, av: 6 }, // no longer parses: the default stands
  };
  // Invalid desired values after a restart: refused, and the values in effect are the restored ones.
  f.w.onTwin({ $version: 9, size: "x", on: 3, threads: -1, metered: "y" }, reported);
  const o = f.last();
  assert.deepEqual([o.size.value, o.on.value, o.threads.value, o.metered.value], [42, true, 8, 0]);
  assert.ok(Object.values(o).every((x) => x.status === 400));
  assert.deepEqual(f.w.values(), { size: 42, on: true, threads: 8, metered: 0 });
  // The module was told about every restored value (it starts from its defaults).
  assert.deepEqual(f.applied, [
    ["size", 42, 10],
    ["on", true, false],
    ["threads", 8, 0],
  ]);

  // Only the first twin read restores: later reported documents are the module's own writes.
  f.w.onTwin({ $version: 10, size: "x" }, { size: { value: 77, ac: 200, av: 10 } });
  assert.equal(f.w.get("size"), 42);
});

test("a restored value equal to the desired one is applied once (the module learns it) and acked 200", () => {
  const f = framework();
  f.w.onTwin({ $version: 2, size: 42 }, { size: { value: 42, ac: 200, av: 2 } });
  assert.deepEqual(f.applied, [["size", 42, 10]]);
  assert.deepEqual(f.last().size, { value: 42, status: 200 });
});

test("a restore whose apply hook throws keeps the default", () => {
  const f = framework({
    apply: () => {
      throw new Error("cannot");
    },
  });
  f.w.onTwin({ $version: 2, size: "bad" }, { size: { value: 42, ac: 200, av: 1 } });
  assert.equal(f.w.get("size"), 10);
  assert.deepEqual(f.last().size.value, 10);
});

test("a property absent from a later twin read goes back to its default, acked 200", () => {
  const f = framework();
  f.w.onTwin({ $version: 1, size: 42, on: true });
  f.w.onTwin({ $version: 2, on: true });
  assert.deepEqual(f.last(), {
    size: { value: 10, status: 200, description: "not set: the default" },
    on: { value: true, status: 200 },
  });
  assert.equal(f.w.get("size"), 10);
  assert.deepEqual(f.applied.at(-1), ["size", 10, 42]);
  // Absent and already at its default: nothing to ack.
  f.w.onTwin({ $version: 3, on: true });
  assert.deepEqual(Object.keys(f.last()), ["on"]);
});

test("next-round properties wait while a round runs (202), then applyPending applies and acks 200 at the original av", () => {
  const f = framework();
  f.w.onTwin({ $version: 1 });
  f.setBusy(true);
  f.w.onPatch({ $version: 2, threads: 4, size: 50 });
  assert.deepEqual(f.last(), {
    threads: { value: 4, status: 202, description: "applies when the running round ends" },
    size: { value: 50, status: 200 },
  });
  assert.equal(f.w.get("threads"), 0, "not yet in effect");
  assert.deepEqual(f.w.pendingNames(), ["threads"]);
  // A twin read meanwhile (a reconnect) keeps it pending.
  f.w.onTwin({ $version: 2, threads: 4, size: 50 });
  assert.equal(f.w.get("threads"), 0);
  f.w.onPatch({ $version: 3, threads: 6 });
  f.setBusy(false);
  f.w.applyPending();
  assert.deepEqual(f.sent.at(-1), { outcomes: { threads: { value: 6, status: 200 } }, version: 3 });
  assert.equal(f.w.get("threads"), 6);
  assert.deepEqual(f.applied.at(-1), ["threads", 6, 0]);
  assert.deepEqual(f.w.pendingNames(), []);
  const n = f.sent.length;
  f.w.applyPending();
  assert.equal(f.sent.length, n, "nothing pending: no ack");
});

test("a next-round property removed (null or absent) while a round runs waits too", () => {
  const f = framework();
  f.w.onTwin({ $version: 1, threads: 4 });
  f.setBusy(true);
  f.w.onPatch({ $version: 2, threads: null });
  assert.deepEqual(f.last().threads, {
    value: 0,
    status: 202,
    description: "applies when the running round ends",
  });
  assert.equal(f.w.get("threads"), 4);
  f.w.onPatch({ $version: 3, threads: 5 });
  f.w.onTwin({ $version: 4 });
  assert.equal(f.last().threads.status, 202, "absent: back to the default at the round's end");
  assert.equal(f.w.get("threads"), 4, "still the round's value");
  f.setBusy(false);
  f.w.applyPending();
  assert.deepEqual(f.sent.at(-1), { outcomes: { threads: { value: 0, status: 200 } }, version: 4 });
  assert.equal(f.w.get("threads"), 0);
});

test("an apply hook that throws is a 500 with the reason; the previous value stays", () => {
  const f = framework({
    apply: (name, value) => {
      if (name === "size" && value === 13) throw new FlotillaError("E_QUEUE_CONFIG", "thirteen\nis unlucky");
      if (name === "on") throw "a string";
    },
  });
  f.w.onTwin({ $version: 1, size: 20 });
  f.w.onPatch({ $version: 2, size: 13, on: true });
  const o = f.last();
  assert.equal(o.size.status, 500);
  assert.equal(o.size.value, 20);
  assert.equal(o.size.description, "E_QUEUE_CONFIG: thirteen is unlucky", "one line");
  assert.equal(o.on.status, 500);
  assert.equal(o.on.value, false);
  assert.match(o.on.description ?? "", /^E_INTERNAL: .*a string/);
  assert.equal(f.w.get("size"), 20);
  assert.equal(f.w.get("on"), false);
  // A pending value whose apply fails at the round's end: 500 at its av, the previous value stays.
  const g = framework({
    apply: (name) => {
      if (name === "threads") throw new Error("no threads");
    },
  });
  g.setBusy(true);
  g.w.onTwin({ $version: 1, threads: 3 });
  g.setBusy(false);
  g.w.applyPending();
  assert.deepEqual(g.sent.at(-1), {
    outcomes: { threads: { value: 0, status: 500, description: "E_INTERNAL: no threads" } },
    version: 1,
  });
});

test("a parser that throws something other than a FlotillaError is a coded one-line 400", () => {
  const odd = {
    a: customProperty<number>({
      schema: "integer",
      description: "a",
      default: 1,
      parse: (v) => (v as { x: { y: number } }).x.y, // a TypeError for most values
    }),
    b: customProperty<string>({
      schema: "string",
      description: "b",
      default: "",
      parse: () => {
        throw new Error(`line one\nline two ${"z".repeat(5000)}`);
      },
    }),
    c: customProperty<string>({
      schema: "string",
      description: "c",
      default: "",
      parse: () => {
        throw undefined;
      },
    }),
  } satisfies PropertySpecs;
  const f = framework({ specs: odd });
  f.w.onTwin({ $version: 1, a: 5, b: "x", c: "y" });
  const o = f.last();
  for (const name of ["a", "b", "c"]) {
    assert.equal(o[name].status, 400, name);
    const d = o[name].description ?? "";
    assert.match(d, /^E_PROPERTY_INVALID: /, name);
    assert.ok(!d.includes("\n"), `${name}: one line`);
    assert.ok(d.length <= 300, `${name}: bounded (${d.length})`);
  }
  assert.equal(o.a.value, 1);
  f.w.onPatch({ $version: 2, a: { x: { y: 7 } } });
  assert.deepEqual(f.last().a, { value: 7, status: 200 });
});

test("huge and odd values never throw out of the framework", () => {
  let deep: unknown = 1;
  for (let i = 0; i < 100_000; i++) deep = { d: deep };
  let deepArray: unknown = [];
  for (let i = 0; i < 100_000; i++) deepArray = [deepArray];
  const anything = {
    any: customProperty<unknown>({ schema: "string", description: "any", default: null, parse: (v) => v }),
    size: specs().size,
    on: specs().on,
  } satisfies PropertySpecs;
  const f = framework({ specs: anything });
  const values: unknown[] = [
    deep,
    deepArray,
    "x".repeat(1_000_000),
    Array.from({ length: 100_000 }, (_, i) => i),
    { a: { b: [1, { c: "NaN" }] } },
    "NaN",
    "-Infinity",
    1e308,
    -0,
    Number.MAX_SAFE_INTEGER + 2,
  ];
  let version = 1;
  for (const v of values) {
    for (const name of ["any", "size", "on", `unknown-${"k".repeat(2000)}`]) {
      assert.doesNotThrow(() => f.w.onPatch({ $version: ++version, [name]: v }), name);
      assert.doesNotThrow(() => f.w.onTwin({ $version: ++version, [name]: v }), name);
      for (const o of Object.values(f.last())) {
        assert.ok([200, 400].includes(o.status), `${name}: ${o.status}`);
        assert.ok((o.description ?? "").length <= 300, "a bounded description");
        assert.ok(!(o.description ?? "").includes("\n"), "one line");
      }
    }
  }
  assert.equal(f.w.get("size"), 10);
  assert.equal(f.w.get("on"), false);
  // A log line for a huge value is bounded too.
  assert.ok(f.logged.every(([, line]) => line.length < 600 && !line.includes("\n")));
  // Not a document at all.
  assert.doesNotThrow(() => f.w.onTwin(null as never));
  assert.doesNotThrow(() => f.w.onPatch([] as never));
  assert.doesNotThrow(() => f.w.onPatch("x" as never));
});

test(
  "through ModuleHost.ackDesired: the reported patch is the Plug and Play ack, sent once per value and version",
  withContext(async (t) => {
    const client = new FakeModuleClient();
    client.twin.properties.desired.size = 42;
    client.twin.properties.desired.on = "maybe";
    client.twin.properties.desired.colour = "red";
    client.twin.properties.desired.acks = ["u1"];
    const w = new WritableProperties({
      specs: specs(),
      cloudKeys: ["acks"],
      ack: (o, v) => host.ackDesired(o, v),
      reservedKeys: ["state"],
    });
    const host: ModuleHost = new ModuleHost({
      name: "test-module",
      client,
      log: createLogger({ component: "test-module", level: "error", sink: () => undefined }),
      stoppedCode: "E_QUEUE_STOPPED",
      reconnectDelay: () => 5,
      reportIntervalMs: 0,
      reportedKeys: ["state"],
      hooks: {
        onTwin: (twin) => w.onTwin(twin.properties.desired, twin.properties.reported),
        onDesiredPatch: (delta) => w.onPatch(delta),
      },
    });
    t.after(() => host.stop());
    await host.start();
    await until(() => client.twin.reportedPatches.length >= 1, 5000, "the acks");
    await host.reportsSettled();
    const patches = client.twin.reportedPatches;
    const merged = Object.assign({}, ...patches) as Record<string, unknown>;
    assert.deepEqual(merged.size, { value: 42, ac: 200, av: 1, ad: null });
    assert.ok(isWritableAck(merged.size), "an ack as sent (ad: null) is an ack");
    assert.deepEqual(Object.keys(merged).sort(), ["colour", "on", "size"]);
    const on = merged.on as { value: unknown; ac: number; av: number; ad: string };
    assert.equal(on.ac, 400);
    assert.equal(on.value, false);
    assert.equal(on.av, 1);
    assert.match(on.ad, /^E_PROPERTY_INVALID: on must be true or false, not "maybe"$/);
    assert.equal((merged.colour as { ac: number }).ac, 400);

    // The same desired document read again (a reconnect): nothing is acked again.
    const n = patches.length;
    client.emit("connect");
    await until(() => client.getTwinCalls === 2, 5000, "the second twin read");
    await host.reportsSettled();
    assert.equal(client.twin.reportedPatches.length, n);

    // A patch: a fresh ack at the new version.
    client.twin.patchDesired({ $version: 2, on: true });
    const onAck = () =>
      client.twin.reportedPatches.find((p) => (p.on as { av?: number } | undefined)?.av === 2);
    await until(() => onAck() !== undefined, 5000, "the patch's ack");
    assert.deepEqual(onAck()?.on, { value: true, ac: 200, av: 2, ad: null });
  }),
);
