import { describe, test } from "@jest/globals";
import assert from "node:assert/strict";
import { isFlotillaError } from "../../../core/errors";
import { SelectionHistory } from "../../../core/selection/history";

describe("SelectionHistory", () => {
  test("records picks, completions and timeouts", () => {
    const h = new SelectionHistory();
    h.recordSelected(1, ["a", "b"]);
    h.recordCompleted("a", { loss: 0.7, samples: 500, durationS: 12 });
    h.recordTimeout("b");
    h.recordSelected(3, ["b"]);
    h.recordTimeout("b");
    assert.equal(h.lastRound, 3);
    assert.deepEqual(h.get("a"), {
      selected: 1,
      completions: 1,
      timeouts: 0,
      consecutiveTimeouts: 0,
      lastSelectedRound: 1,
      lastLoss: 0.7,
      lastSamples: 500,
      lastDurationS: 12,
    });
    assert.deepEqual(h.get("b"), {
      selected: 2,
      completions: 0,
      timeouts: 2,
      consecutiveTimeouts: 2,
      lastSelectedRound: 3,
    });
    h.recordCompleted("b", { loss: NaN, samples: -1 });
    assert.equal(h.get("b")!.consecutiveTimeouts, 0);
    assert.equal(h.get("b")!.lastLoss, undefined);
    assert.equal(h.get("b")!.lastSamples, undefined);
  });

  test("round-trips through JSON (object or text)", () => {
    const h = new SelectionHistory();
    h.recordSelected(4, ["x", "y"]);
    h.recordCompleted("y", { loss: 1.5, samples: 10, durationS: 3 });
    const back = SelectionHistory.fromJSON(JSON.parse(JSON.stringify(h)));
    assert.deepEqual(back.toJSON(), h.toJSON());
    assert.deepEqual(SelectionHistory.fromJSON(JSON.stringify(h)).toJSON(), h.toJSON());
    assert.equal(back.lastRound, 4);
  });

  test("a malformed history is one E_SELECTION_HISTORY line naming the field", () => {
    const good = { version: 1, lastRound: 2, devices: { a: { selected: 1, completions: 0, timeouts: 1 } } };
    const cases: [unknown, RegExp][] = [
      ["{", /not JSON/],
      [null, /not an object/],
      [{ ...good, version: 2 }, /version/],
      [{ ...good, lastRound: -1 }, /lastRound/],
      [{ ...good, devices: [] }, /devices/],
      [{ ...good, devices: { a: 3 } }, /device a/],
      [{ ...good, devices: { a: { selected: 1, completions: 0 } } }, /timeouts/],
      [{ ...good, devices: { a: { selected: 1.5, completions: 0, timeouts: 0 } } }, /selected/],
      [{ ...good, devices: { a: { ...good.devices.a, lastLoss: "x" } } }, /lastLoss/],
      [{ ...good, devices: { a: { ...good.devices.a, extra: 1 } } }, /unknown field extra/],
    ];
    for (const [input, re] of cases) {
      assert.throws(
        () => SelectionHistory.fromJSON(input),
        (e: unknown) => {
          assert.ok(isFlotillaError(e) && e.code === "E_SELECTION_HISTORY", String(e));
          assert.match(e.message, re);
          assert.ok(!e.message.includes("\n"));
          return true;
        },
      );
    }
    assert.throws(() => new SelectionHistory().recordSelected(-1, []), /E_SELECTION_HISTORY|non-negative/);
  });
});
