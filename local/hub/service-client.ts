/**
 * The one place that points the unmodified azure-iothub SDK at the local hub.
 *
 * Problem (the team notes on the IoT Hub wire): azure-iothub builds every HTTPS request as
 * `https.request({ host: <HostName>, path, ... })` (common-http/http.js buildRequest), so HostName cannot carry a
 * port, and the Registry / Client constructors install their own `new https.Agent({ keepAlive: true })` through
 * the internal RestApiClient's `setOptions({ http: { agent } })`; no public option takes a CA or a port.
 *
 * Solution: construct the SDK objects normally (fromConnectionString), then replace the agent on their internal
 * RestApiClient (`_restApiClient.setOptions`, the same call the constructors make) with an https.Agent whose own
 * options carry the real endpoint. Node's http Agent merges its options over each request's
 * (`options = { ...options, ...this.options }` in Agent.prototype.addRequest), so `host`/`port` send the
 * connection to the local hub while the request keeps `Host: <hubName>`; `servername` keeps SNI and the
 * certificate check on the hub name (the hub's certificate carries it); `ca` trusts the hub's CA.
 * Everything else — URLs, SAS signing with `sr=<hubName>&skn=iothubowner`, JSON, error translation — stays the SDK's.
 * The private field is checked at runtime: if a future SDK renames it, this throws E_HUB_SDK_INTERNALS instead of
 * silently talking to the real Azure host name.
 */
import * as fs from "node:fs";
import * as https from "node:https";
import { Client, Registry } from "azure-iothub";
import { FlotillaError } from "../../core/errors";
import { parseConnectionString } from "./sas";

/** What a caller outside the hub process knows (e.g. from writeHubInfo's JSON). */
export interface HubServiceInfo {
  /** HostName=..;SharedAccessKeyName=..;SharedAccessKey=..[;GatewayHostName=host:port] */
  serviceConnectionString: string;
  /** CA certificate PEM text, or... */
  caCertPem?: string;
  /** ...a path to it. */
  caCertPath?: string;
  /** HTTPS port of the hub; defaults to the port in GatewayHostName. */
  httpsPort?: number;
  /** Address to connect to; defaults to the host in GatewayHostName, else 127.0.0.1. */
  host?: string;
}

interface RestApiClientLike {
  setOptions(options: { http: { agent: https.Agent } }): void;
}

interface Endpoint {
  hubName: string;
  host: string;
  port: number;
  ca: string;
}

function resolveEndpoint(info: HubServiceInfo): Endpoint {
  const cs = parseConnectionString(info.serviceConnectionString);
  const hubName = cs.HostName;
  if (!hubName)
    throw new FlotillaError("E_HUB_CONNECTION_STRING", "service connection string has no HostName");
  const gw = cs.GatewayHostName ? /^(.*?)(?::(\d+))?$/.exec(cs.GatewayHostName) : null;
  const port = info.httpsPort ?? (gw?.[2] ? Number(gw[2]) : undefined);
  if (!port)
    throw new FlotillaError(
      "E_HUB_CONNECTION_STRING",
      "no HTTPS port: give httpsPort or GatewayHostName=host:port",
    );
  const host = info.host ?? (gw?.[1] || "127.0.0.1");
  let ca = info.caCertPem;
  if (!ca && info.caCertPath) ca = fs.readFileSync(info.caCertPath, "utf8");
  if (!ca)
    throw new FlotillaError(
      "E_HUB_CONNECTION_STRING",
      "the hub's CA certificate is needed (caCertPem or caCertPath)",
    );
  return { hubName, host, port, ca };
}

/** An https.Agent that sends every request of an SDK object to the local hub. */
export function localHubAgent(info: HubServiceInfo): https.Agent {
  const ep = resolveEndpoint(info);
  return new https.Agent({
    keepAlive: true,
    host: ep.host,
    port: ep.port,
    servername: ep.hubName,
    ca: ep.ca,
  });
}

function retarget<T extends object>(sdkObject: T, agent: https.Agent, what: string): T {
  const rest = (sdkObject as { _restApiClient?: Partial<RestApiClientLike> })._restApiClient;
  if (!rest || typeof rest.setOptions !== "function") {
    throw new FlotillaError(
      "E_HUB_SDK_INTERNALS",
      `${what}._restApiClient.setOptions not found: azure-iothub internals changed`,
    );
  }
  rest.setOptions({ http: { agent } });
  return sdkObject;
}

/** A real azure-iothub Registry whose HTTPS calls go to the local hub. */
export function createRegistry(info: HubServiceInfo): Registry {
  return retarget(
    Registry.fromConnectionString(info.serviceConnectionString),
    localHubAgent(info),
    "Registry",
  );
}

/**
 * A real azure-iothub service Client for direct methods (invokeDeviceMethod) against the local hub. Its AMQP
 * features (open(), send() C2D, feedback) are not served by the local hub.
 */
export function createServiceClient(info: HubServiceInfo): Client {
  return retarget(Client.fromConnectionString(info.serviceConnectionString), localHubAgent(info), "Client");
}
