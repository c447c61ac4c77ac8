/** Issue 11 (hardening): the service REST API authenticates first, never answers 500 on bad input, bounds queries. */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import * as https from "node:https";
import { isFlotillaError } from "../../../core/errors";
import type { LocalHub } from "../../../local/hub";
import { parseCondition, parseQuery, runQuery } from "../../../local/hub/query";
import { parseRoute } from "../../../local/hub/routes";
import { createSasToken, parseConnectionString } from "../../../local/hub/sas";
import { startTestHub } from "./support";

interface Reply {
  status: number;
  body: string;
  headers: Record<string, unknown>;
}

function call(
  hub: LocalHub,
  method: string,
  path: string,
  body?: string,
  headers: Record<string, string> = {},
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      {
        host: "127.0.0.1",
        port: hub.httpsPort,
        servername: "localhost",
        ca: hub.caCertPem,
        method,
        path,
        headers,
      },
      (res) => {
        let text = "";
        res.on("data", (c: Buffer) => (text += c.toString()));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body: text, headers: res.headers }));
      },
    );
    req.on("error", reject);
    req.end(body);
  });
}

function ownerAuth(hub: LocalHub): string {
  const owner = parseConnectionString(hub.serviceConnectionString);
  return createSasToken(
    hub.hubName,
    owner.SharedAccessKey,
    Math.floor(Date.now() / 1000) + 600,
    "iothubowner",
  );
}

/** An IoT Hub error body: one JSON line, `ErrorCode:<code>;...`, no stack frames anywhere. */
function assertCodedError(r: Reply, status: number, code: RegExp): void {
  assert.equal(r.status, status, r.body);
  assert.ok(!r.body.includes("\n"), "one line");
  assert.doesNotMatch(r.body, /\bat .*\(.*:\d+:\d+\)|node:internal|URIError|RangeError/, r.body);
  const parsed = JSON.parse(r.body) as { Message: string };
  assert.match(parsed.Message, code);
}

const V = "?api-version=2021-04-12";

test("GET /devices/%zz: 401 without auth (nothing parsed first), 400 with a coded one-line body with auth", async () => {
  const t = await startTestHub();
  try {
    const anon = await call(t.hub, "GET", `/devices/%zz${V}`);
    assertCodedError(anon, 401, /^ErrorCode:IotHubUnauthorizedAccess;/);
    const anonTwin = await call(t.hub, "PATCH", `/twins/%E0%A4%A${V}`, "{}");
    assertCodedError(anonTwin, 401, /^ErrorCode:IotHubUnauthorizedAccess;/);

    const auth = { Authorization: ownerAuth(t.hub) };
    const bad = await call(t.hub, "GET", `/devices/%zz${V}`, undefined, auth);
    assertCodedError(bad, 400, /^ErrorCode:ArgumentInvalid;E_HUB_BAD_URI: malformed percent-encoding/);
    assert.equal(bad.headers["iothub-errorcode"], "ArgumentInvalid");
    const badModule = await call(t.hub, "GET", `/devices/d/modules/%${V}`, undefined, auth);
    assertCodedError(badModule, 400, /E_HUB_BAD_URI/);
    assert.equal(t.hub.metrics().internalErrors, 0, t.logs.join("\n"));
    // Still serving.
    t.hub.createDevice("fine");
    assert.equal((await call(t.hub, "GET", `/devices/fine${V}`, undefined, auth)).status, 200);
  } finally {
    await t.close();
  }
});

test("a query with 20,000 ANDs or deep nesting is a coded 400 (E_HUB_QUERY), not a stack overflow", async () => {
  const many = "SELECT * FROM devices WHERE " + Array(20_001).fill("tags.a = 1").join(" AND ");
  const deep = "SELECT * FROM devices WHERE " + "(".repeat(3000) + "tags.a = 1" + ")".repeat(3000);
  const nots = "SELECT * FROM devices WHERE " + "NOT ".repeat(1500) + "tags.a = 1";
  const calls =
    "SELECT * FROM devices WHERE " + "LENGTH(".repeat(1000) + "deviceId" + ")".repeat(1000) + " = 1";
  // Under the character limit but over the token limit: a long flat chain.
  const flat = "SELECT * FROM devices WHERE " + Array(800).fill("a=1").join(" AND ");
  for (const q of [many, deep, nots, calls, flat]) {
    assert.throws(
      () => parseQuery(q),
      (e: unknown) => isFlotillaError(e) && e.code === "E_HUB_QUERY",
      q.slice(0, 60),
    );
    assert.throws(
      () => runQuery(q, () => [{ deviceId: "x", tags: { a: 1 } }]),
      (e: unknown) => isFlotillaError(e) && e.code === "E_HUB_QUERY",
    );
  }
  assert.throws(
    () => parseCondition("(".repeat(3000) + "a = 1" + ")".repeat(3000)),
    (e: unknown) => isFlotillaError(e) && e.code === "E_HUB_QUERY",
  );
  assert.throws(
    () =>
      parseRoute("r", `FROM /messages/* WHERE ${"(".repeat(3000)}a = 1${")".repeat(3000)} INTO $upstream`),
    (e: unknown) => isFlotillaError(e) && e.code === "E_HUB_QUERY",
  );
  // Reasonable queries still work: a chain of 100 conditions, nesting 10 deep.
  const ok = runQuery(
    "SELECT * FROM devices WHERE " +
      Array(100).fill("tags.a = 1").join(" AND ") +
      " AND " +
      "(".repeat(10) +
      "deviceId = 'x'" +
      ")".repeat(10),
    () => [{ deviceId: "x", tags: { a: 1 } }],
  );
  assert.equal(ok.items.length, 1);

  const t = await startTestHub();
  try {
    t.hub.createDevice("q1");
    const auth = { Authorization: ownerAuth(t.hub), "Content-Type": "application/json" };
    for (const q of [many, deep]) {
      const r = await call(t.hub, "POST", `/devices/query${V}`, JSON.stringify({ query: q }), auth);
      assertCodedError(r, 400, /^ErrorCode:ArgumentInvalid;query /);
    }
    assert.equal(t.hub.metrics().internalErrors, 0, t.logs.join("\n"));
    const r = await call(
      t.hub,
      "POST",
      `/devices/query${V}`,
      JSON.stringify({ query: "SELECT * FROM devices" }),
      auth,
    );
    assert.equal(r.status, 200);
    assert.equal((JSON.parse(r.body) as unknown[]).length, 1);
  } finally {
    await t.close();
  }
});
