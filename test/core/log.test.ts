import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { FlotillaError } from "../../core/errors";
import {
  createLogger,
  formatText,
  jsonSink,
  lineLogger,
  loggerFromEnv,
  stringLogger,
  toLogger,
  type LogRecord,
} from "../../core/log";

function capture(): { records: LogRecord[]; sink: (r: LogRecord) => void } {
  const records: LogRecord[] = [];
  return { records, sink: (r) => records.push(r) };
}

function streams(): {
  out: string[];
  err: string[];
  o: { write(s: string): void };
  e: { write(s: string): void };
} {
  const out: string[] = [];
  const err: string[] = [];
  return { out, err, o: { write: (s) => void out.push(s) }, e: { write: (s) => void err.push(s) } };
}

test("levels below the logger's level are dropped", () => {
  const { records, sink } = capture();
  const log = createLogger({ component: "c", level: "warn", sink });
  log.debug("d");
  log.info("i");
  log.warn("w");
  log.error("e");
  assert.deepEqual(
    records.map((r) => r.level),
    ["warn", "error"],
  );
  assert.equal(log.enabled("info"), false);
  assert.equal(log.enabled("error"), true);
});

test("JSON lines: time, level, component, msg, then the fields; warn/error on stderr, an error as code + error", () => {
  const s = streams();
  const log = createLogger({ component: "trainer", level: "debug", sink: jsonSink(s.o, s.e) });
  log.info("round started", { jobId: "job-1", round: 3 });
  log.warn("round failed\nbadly", { err: new FlotillaError("E_UPLOAD", "sending failed"), msg: "shadow" });
  log.debug("big", { n: 10n, undef: undefined });
  assert.equal(s.out.length, 2);
  assert.equal(s.err.length, 1);
  for (const line of [...s.out, ...s.err]) {
    assert.ok(line.endsWith("\n"));
    assert.equal(line.indexOf("\n"), line.length - 1, "one line per record");
  }
  const info = JSON.parse(s.out[0]) as Record<string, unknown>;
  assert.deepEqual(Object.keys(info), ["time", "level", "component", "msg", "jobId", "round"]);
  assert.equal(info.level, "info");
  assert.equal(info.component, "trainer");
  assert.equal(info.msg, "round started");
  assert.equal(info.jobId, "job-1");
  assert.equal(info.round, 3);
  assert.ok(!Number.isNaN(Date.parse(info.time as string)));
  const warn = JSON.parse(s.err[0]) as Record<string, unknown>;
  assert.equal(warn.msg, "round failed badly");
  assert.equal(warn.code, "E_UPLOAD");
  assert.equal(warn.error, "sending failed");
  assert.equal(warn["field.msg"], "shadow", "a field never overwrites the record's own keys");
  const debug = JSON.parse(s.out[1]) as Record<string, unknown>;
  assert.equal(debug.n, "10");
  assert.ok(!("undef" in debug));
});

test("child: a sub-component and fields carried on every record", () => {
  const { records, sink } = capture();
  const log = createLogger({ component: "trainer", sink, fields: { deviceId: "dev-1" } });
  const round = log.child({ jobId: "j", round: 2 });
  const secagg = round.child("secagg", { step: "advertise" });
  round.info("a");
  secagg.warn("b", { round: 5 });
  assert.equal(records[0].component, "trainer");
  assert.deepEqual(records[0].fields, { deviceId: "dev-1", jobId: "j", round: 2 });
  assert.equal(records[1].component, "trainer.secagg");
  assert.deepEqual(records[1].fields, { deviceId: "dev-1", jobId: "j", round: 5, step: "advertise" });
});

test("text format: one human line with key=value fields", () => {
  const r: LogRecord = {
    time: new Date("2026-01-02T03:04:05.678Z"),
    level: "warn",
    component: "update-queue",
    msg: "send failed",
    fields: { updateId: "u1", reason: "two words", n: 3, err: new FlotillaError("E_TIMEOUT", "no answer") },
  };
  assert.equal(
    formatText(r),
    '03:04:05.678 WARN  update-queue: send failed updateId=u1 reason="two words" n=3 code=E_TIMEOUT error="no answer"',
  );
  const lines: string[] = [];
  stringLogger((l) => lines.push(l), "aggregator").info("job created", { jobId: "j" });
  assert.deepEqual(lines, ["INFO  aggregator: job created jobId=j"]);
});

test("loggerFromEnv: FLOTILLA_LOG_LEVEL and FLOTILLA_LOG_FORMAT; invalid values are E_CONFIG_INVALID", () => {
  const s = streams();
  const log = loggerFromEnv(
    "profiler",
    { FLOTILLA_LOG_LEVEL: "debug", FLOTILLA_LOG_FORMAT: "text" },
    { out: s.o, err: s.e },
  );
  log.debug("hello", { a: 1 });
  assert.match(s.out[0], /^\d\d:\d\d:\d\d\.\d{3} DEBUG profiler: hello a=1\n$/);
  const json = loggerFromEnv("q", {}, { out: s.o, err: s.e });
  assert.equal(json.level, "info");
  json.info("x");
  assert.equal((JSON.parse(s.out[1]) as { component: string }).component, "q");
  assert.equal(loggerFromEnv("q", {}, { format: "text", out: s.o, err: s.e }).level, "info");
  assert.throws(
    () => loggerFromEnv("q", { FLOTILLA_LOG_LEVEL: "loud" }),
    (e: unknown) =>
      e instanceof FlotillaError && e.code === "E_CONFIG_INVALID" && /FLOTILLA_LOG_LEVEL/.test(e.message),
  );
  assert.throws(
    () => loggerFromEnv("q", { FLOTILLA_LOG_FORMAT: "xml" }),
    (e: unknown) => e instanceof FlotillaError && e.code === "E_CONFIG_INVALID",
  );
});

test("a line callback becomes a Logger (`component: msg`), and a sink that throws never reaches the caller", () => {
  const lines: string[] = [];
  const log = toLogger((level, message) => lines.push(`${level} ${message}`), "quantizer");
  log.warn("input: E_QUANT_FRAME: bad", { code: "E_QUANT_FRAME" });
  log.debug("dropped: a line callback has no debug level");
  assert.deepEqual(lines, ["warn quantizer: input: E_QUANT_FRAME: bad"]);
  const parent = lineLogger((_l, m) => lines.push(m), "device-1");
  assert.equal(toLogger(parent, "trainer").component, "device-1.trainer");
  const broken = createLogger({
    sink: () => {
      throw new Error("stream closed");
    },
  });
  assert.doesNotThrow(() => broken.error("still fine"));
});
