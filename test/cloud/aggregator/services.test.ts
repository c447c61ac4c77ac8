import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { createLogger, type LogRecord } from "../../../core/log";
import { logLines } from "../../../cloud/aggregator/src/services";

test("the Function's log lines become levelled records with code, jobId and round fields", () => {
  const records: LogRecord[] = [];
  const log = logLines(
    createLogger({ component: "aggregator", level: "debug", sink: (r) => records.push(r) }),
  );
  log("round job-1/3 closed: 3/3 updates, model 0123456789ab");
  log("round job-1/4: twin of dev-a not updated: E_TIMEOUT: no answer");
  log("job job-2: swept 4 orphan chunk(s) older than 1440 min");
  assert.deepEqual(
    records.map((r) => [r.level, r.component, r.fields]),
    [
      ["info", "aggregator", { jobId: "job-1", round: 3 }],
      ["warn", "aggregator", { jobId: "job-1", round: 4, code: "E_TIMEOUT" }],
      ["info", "aggregator", { jobId: "job-2" }],
    ],
  );
});
