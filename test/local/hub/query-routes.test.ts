import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { isFlotillaError } from "../../../core/errors";
import { evaluate, parseCondition, parseQuery, resolveIn, runQuery } from "../../../local/hub/query";
import { matchRoutes, parseRoute, parseRoutes } from "../../../local/hub/routes";
import type { JsonObject } from "../../../local/hub/twin";

const docs: JsonObject[] = [
  { deviceId: "a", tags: { site: "n", n: 1 }, properties: { reported: { fw: "1.2", ok: true } } },
  { deviceId: "b", tags: { site: "s", n: 2 }, properties: { reported: { fw: "1.10" } } },
  { deviceId: "c", tags: { n: "2" }, properties: { reported: {} } },
];
const where = (cond: string) =>
  docs.filter((d) => evaluate(parseCondition(cond), (p) => resolveIn(d, p)) === true).map((d) => d.deviceId);

test("query conditions: comparisons, AND/OR/NOT with undefined semantics, IN, functions, literals", () => {
  assert.deepEqual(where("tags.n = 2"), ["b"], "number 2 does not equal string '2'");
  assert.deepEqual(where("tags.n = '2'"), ["c"]);
  assert.deepEqual(where("tags.site != 'n'"), ["b"], "undefined tags.site on c is not != 'n'");
  assert.deepEqual(where("NOT tags.site = 'n'"), ["b"]);
  assert.deepEqual(where("tags.site = 'n' OR tags.n >= 2"), ["a", "b"]);
  assert.deepEqual(where("tags.n IN [1, '2']"), ["a", "c"]);
  assert.deepEqual(where("tags.n NIN [1]"), ["b", "c"]);
  assert.deepEqual(where("IS_DEFINED(properties.reported.ok) AND properties.reported.ok = true"), ["a"]);
  assert.deepEqual(
    where("properties.reported.fw < '1.2'"),
    ["b"],
    "string order, as the query language compares",
  );
  assert.deepEqual(where("STARTSWITH(deviceId, 'b') or ENDSWITH(deviceId, 'c')"), ["b", "c"]);
  assert.deepEqual(where("tags.n > -1 and tags.n < 1.5e0"), ["a"]);
  assert.deepEqual(where("deviceId = 'it''s'"), []);
  assert.equal(
    evaluate(parseCondition("'it''s' = \"it's\""), () => undefined),
    true,
  );
});

test("query parser rejects malformed input with E_HUB_QUERY and pages stably", () => {
  for (const bad of [
    "SELECT",
    "SELECT * FROM",
    "SELECT * FROM devices WHERE",
    "SELECT * FROM devices WHERE a = ",
    "SELECT * FROM devices x",
    "SELECT a, COUNT() FROM devices",
    "SELECT * FROM devices WHERE 'x",
    "SELECT * FROM devices WHERE a ~ 1",
  ]) {
    assert.throws(
      () => parseQuery(bad),
      (e: unknown) => isFlotillaError(e) && e.code === "E_HUB_QUERY",
      bad,
    );
  }
  const src = () => docs;
  const p1 = runQuery("SELECT * FROM devices", src, { pageSize: 2 });
  assert.equal(p1.items.length, 2);
  assert.ok(p1.continuation);
  const p2 = runQuery("SELECT * FROM devices", src, { pageSize: 2, continuation: p1.continuation });
  assert.deepEqual(
    p2.items.map((d) => d.deviceId),
    ["c"],
  );
  assert.equal(p2.continuation, undefined);
  assert.throws(
    () => runQuery("SELECT * FROM devices.modules", src, { continuation: p1.continuation }),
    /continuation/,
  );
});

test("route strings parse like the IoT Edge manifest and match by source, output and condition", () => {
  const routes = parseRoutes({
    a: 'FROM /messages/modules/trainer/outputs/updates INTO BrokeredEndpoint("/modules/queue/inputs/in1")',
    b: {
      route: "from /messages/modules/queue/* where $connectionModuleId = 'queue' into $upstream",
      priority: 1,
    },
    c: "FROM /messages/* WHERE level = 'critical' INTO $upstream",
    d: "FROM /messages/modules/trainer/outputs/* INTO BrokeredEndpoint('/modules/queue/inputs/in1')",
  });
  assert.deepEqual(routes[0].sink, { kind: "module", moduleId: "queue", input: "in1" });
  const msg = (
    moduleId: string | undefined,
    outputName: string | undefined,
    properties: Record<string, string> = {},
  ) => ({
    moduleId,
    outputName,
    properties,
    system: { connectionModuleId: moduleId },
    body: Buffer.alloc(0),
  });
  assert.deepEqual(
    matchRoutes(routes, msg("trainer", "updates")),
    [{ kind: "module", moduleId: "queue", input: "in1" }],
    "a and d share a sink: delivered once",
  );
  assert.deepEqual(matchRoutes(routes, msg("queue", "x")), [{ kind: "upstream" }]);
  assert.deepEqual(matchRoutes(routes, msg("other", "x", { level: "critical" })), [{ kind: "upstream" }]);
  assert.deepEqual(matchRoutes(routes, msg("other", "x", { level: "low" })), []);
  for (const bad of [
    "INTO $upstream",
    "FROM /messages/* INTO",
    "FROM /messages/* INTO $downstream",
    "FROM /devices/* INTO $upstream",
    'FROM /* WHERE a = INTO BrokeredEndpoint("/modules/x/inputs/y")',
  ]) {
    assert.throws(
      () => parseRoute("r", bad),
      (e: unknown) => isFlotillaError(e) && (e.code === "E_HUB_ROUTE" || e.code === "E_HUB_QUERY"),
      bad,
    );
  }
});
