/** Counters the hub keeps; a snapshot is exposed as `LocalHub.metrics()`. */
export interface HubMetrics {
  /** Successful MQTT connections (CONNACK accepted). */
  connections: number;
  /** CONNECTs refused (bad or expired SAS, unknown or disabled identity, bad user name). */
  connectsRejected: number;
  /** D2C messages accepted from devices and modules. */
  d2cAccepted: number;
  /** D2C messages over 256 KB, refused (and the connection closed). */
  d2cRejectedTooLarge: number;
  /** Messages that reached the built-in endpoint (onEvent queue). */
  d2cUpstream: number;
  /** Module output messages delivered to another module's input. */
  moduleInputsDelivered: number;
  /** Module input messages held for a module that was offline or not yet subscribed. */
  moduleInputsQueued: number;
  /** Module input messages dropped (queue full or expired). */
  moduleInputsDropped: number;
  /** Module output messages no route matched. */
  unrouted: number;
  /** PUBLISHes outside the client's namespace (connection closed). */
  unauthorizedPublish: number;
  /** SUBSCRIBEs outside the client's namespace (SUBACK 0x80). */
  unauthorizedSubscribe: number;
  /** $iothub requests that were malformed (answered 400 when they carried a $rid). */
  malformedRequests: number;
  twinGets: number;
  twinReportedPatches: number;
  twinDesiredNotifications: number;
  /** Service REST requests, and those refused for bad authorization. */
  restRequests: number;
  restUnauthorized: number;
  clientErrors: number;
  tlsErrors: number;
  /** MQTT connections closed by the frame guard: a packet over the size bound, a first packet other than CONNECT. */
  packetsTooLarge: number;
  /** MQTT connections closed for not sending CONNECT within the connect timeout. */
  connectTimeouts: number;
  /** Handler bugs contained to one connection or request. */
  internalErrors: number;
}

export function newMetrics(): HubMetrics {
  return {
    connections: 0,
    connectsRejected: 0,
    d2cAccepted: 0,
    d2cRejectedTooLarge: 0,
    d2cUpstream: 0,
    moduleInputsDelivered: 0,
    moduleInputsQueued: 0,
    moduleInputsDropped: 0,
    unrouted: 0,
    unauthorizedPublish: 0,
    unauthorizedSubscribe: 0,
    malformedRequests: 0,
    twinGets: 0,
    twinReportedPatches: 0,
    twinDesiredNotifications: 0,
    restRequests: 0,
    restUnauthorized: 0,
    clientErrors: 0,
    tlsErrors: 0,
    packetsTooLarge: 0,
    connectTimeouts: 0,
    internalErrors: 0,
  };
}
