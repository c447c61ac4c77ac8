/** Embedded local IoT Hub: see hub.ts. */
export {
  DEFAULT_HUB_NAME,
  type IdentityOptions,
  type LocalHub,
  type LocalHubMetrics,
  type LocalHubOptions,
  startLocalHub,
  writeHubInfo,
} from "./hub";
export type { D2CEvent, D2CSystemProperties, OnEvent } from "./d2c";
export { createRegistry, createServiceClient, type HubServiceInfo, localHubAgent } from "./service-client";
export { parseRoute, parseRoutes, type Route, type RouteSink } from "./routes";
export { parseQuery, runQuery } from "./query";
