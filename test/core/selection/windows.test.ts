import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { availableForS, parseWindows } from "../../../core/selection/windows";
import { isFlotillaError } from "../../../core/errors";

const at = (hhmm: string) => Date.UTC(2026, 11, 7, Number(hhmm.slice(0, 2)), Number(hhmm.slice(3, 5)));

test("inside a window: the seconds until it ends; outside every window: 0", () => {
  const w = parseWindows(["08:00-12:00", "13:00-14:30"]);
  assert.equal(availableForS(w, at("09:00")), 3 * 3600);
  assert.equal(availableForS(w, at("14:00")), 30 * 60);
  assert.equal(availableForS(w, at("12:30")), 0);
  assert.equal(availableForS(w, at("12:00")), 0, "a window's end is not in it");
  assert.equal(availableForS(w, at("08:00")), 4 * 3600, "its start is");
});

test("a window that wraps midnight, touching windows join, and all day", () => {
  const night = parseWindows("22:00-06:00");
  assert.equal(availableForS(night, at("23:00")), 7 * 3600);
  assert.equal(availableForS(night, at("01:00")), 5 * 3600);
  assert.equal(availableForS(night, at("12:00")), 0);
  const joined = parseWindows(["06:00-09:00", "09:00-10:00"]);
  assert.equal(availableForS(joined, at("07:00")), 3 * 3600);
  const always = parseWindows(["00:00-24:00"]);
  assert.ok(availableForS(always, at("15:00")) >= 24 * 3600, "all day joins with the next day");
});

test("bad declarations are one-line E_SELECTION_WINDOWS errors", () => {
  for (const bad of [
    [],
    "8-12",
    ["25:00-26:00"],
    ["08:00-08:00"],
    [7],
    ["08:00-09:00-10:00"],
    {},
    "08:60-09:00",
  ]) {
    assert.throws(
      () => parseWindows(bad),
      (e) => isFlotillaError(e) && e.code === "E_SELECTION_WINDOWS" && !e.message.includes("\n"),
      JSON.stringify(bad),
    );
  }
});
