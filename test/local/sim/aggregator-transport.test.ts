import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { DEFAULT_CONFIG, validateConfig, type SimConfig } from "../../../local/sim/config";

/** `--aggregator` over `--transport iothub` becomes the Function job's `aggregator`; what the Function refuses is refused first. */
test("--aggregator with --transport iothub: canonical spec kept; fltrust refused before the stack starts", () => {
  const hub: SimConfig = { ...DEFAULT_CONFIG, transport: "iothub" };
  assert.equal(validateConfig({ ...hub, aggregator: " Median " }).aggregator, "median");
  assert.equal(validateConfig({ ...hub, aggregator: "norm:2+mean" }).aggregator, "norm:2+mean");
  assert.throws(
    () => validateConfig({ ...hub, aggregator: "fltrust" }),
    (e: unknown) =>
      (e as { code?: string }).code === "E_CONFIG_CONFLICT" &&
      /fltrust.*--transport memory/.test((e as Error).message),
  );
  // The memory transport keeps it: FLTrust runs in the simulator, not in the Function.
  assert.equal(validateConfig({ ...DEFAULT_CONFIG, aggregator: "fltrust" }).aggregator, "fltrust");
});
