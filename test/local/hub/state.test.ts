import { test } from "@jest/globals";
import assert from "node:assert/strict";
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { Message } from "azure-iot-device";
import { createRegistry, startLocalHub, writeHubInfo } from "../../../local/hub";
import { startTestHub, waitFor } from "./support";

test("the CA and server certificate are made on first run and reused; the registry persists across restarts", async () => {
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-hub-state-"));
  try {
    const first = await startTestHub({ stateDir, hubName: "unit.azure-devices.net" });
    let cs: string;
    let service: string;
    try {
      const ca = new crypto.X509Certificate(first.hub.caCertPem);
      assert.ok(ca.ca, "the CA is a CA");
      const server = new crypto.X509Certificate(fs.readFileSync(path.join(stateDir, "hub-server.pem")));
      assert.ok(
        server.checkIssued(ca) && server.verify(ca.publicKey),
        "the server certificate is signed by the CA",
      );
      for (const name of ["localhost", "unit.azure-devices.net"]) assert.equal(server.checkHost(name), name);
      assert.equal(server.checkIP("127.0.0.1"), "127.0.0.1");
      assert.equal(
        fs.statSync(path.join(stateDir, "hub-ca.key.pem")).mode & 0o077,
        0,
        "private key is not world-readable",
      );
      cs = first.hub.createDevice("survivor");
      service = first.hub.serviceConnectionString;
      const info = path.join(stateDir, "hub.json");
      writeHubInfo(first.hub, info);
      const json = JSON.parse(fs.readFileSync(info, "utf8"));
      assert.deepEqual(Object.keys(json).sort(), [
        "caCertPath",
        "httpsPort",
        "mqttHost",
        "mqttPort",
        "serviceConnectionString",
      ]);
      assert.equal(json.mqttPort, first.hub.mqttPort);
      assert.equal(fs.readFileSync(json.caCertPath, "utf8"), first.hub.caCertPem);
    } finally {
      await first.close();
    }
    const caBefore = fs.readFileSync(path.join(stateDir, "hub-ca.pem"), "utf8");

    const second = await startTestHub({ stateDir, hubName: "unit.azure-devices.net" });
    try {
      assert.equal(second.hub.caCertPem, caBefore, "the CA is reused");
      // Same key, same policy: the old device key and service key still work (only the ports changed).
      assert.equal(
        second.hub.deviceConnectionString("survivor").split(";GatewayHostName")[0],
        cs.split(";GatewayHostName")[0],
      );
      assert.equal(
        second.hub.serviceConnectionString.split(";GatewayHostName")[0],
        service.split(";GatewayHostName")[0],
      );
      const dev = await second.device("survivor");
      await dev.sendEvent(new Message("back again"));
      await waitFor(() => second.events.length === 1, 5000, "event after restart");
      assert.equal((await createRegistry(second.hub).get("survivor")).responseBody.deviceId, "survivor");
    } finally {
      await second.close();
    }
  } finally {
    fs.rmSync(stateDir, { recursive: true, force: true });
  }
});

test("a different hub name gets a new server certificate from the same CA", async () => {
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-hub-state-"));
  try {
    const a = await startLocalHub({ stateDir, log: () => {} });
    const caA = a.caCertPem;
    await a.close();
    const b = await startLocalHub({ stateDir, hubName: "other.azure-devices.net", log: () => {} });
    try {
      assert.equal(b.caCertPem, caA);
      const server = new crypto.X509Certificate(fs.readFileSync(path.join(stateDir, "hub-server.pem")));
      assert.equal(server.checkHost("other.azure-devices.net"), "other.azure-devices.net");
    } finally {
      await b.close();
    }
    // Without a stateDir everything lives in a temp dir that close() removes.
    const c = await startLocalHub({ log: () => {} });
    const dir = c.stateDir;
    assert.ok(fs.existsSync(c.caCertPath));
    await c.close();
    assert.equal(fs.existsSync(dir), false);
  } finally {
    fs.rmSync(stateDir, { recursive: true, force: true });
  }
});
