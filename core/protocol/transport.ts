import type { ClientInfo } from "../strategies/strategy";

/** Bytes that crossed a transport, counted on the wire (the encoded frames). */
export interface TransportStats {
  uplinkBytes: number;
  downlinkBytes: number;
}

/**
 * The server's side of a transport. The round engine only ever talks to devices through this: it sends frames
 * (core/protocol/messages.ts) addressed to a device and receives the devices' frames. Implementations: the
 * in-process MemoryTransport (here), a worker-thread fleet (local/sim) and, over IoT Hub, twin desired properties +
 * direct methods down and device-to-cloud messages up.
 */
export interface ServerTransport {
  /** Devices that can be asked to train now, with what is known of them. */
  listDevices(): Promise<ClientInfo[]>;
  /** Delivers a frame to one device. Resolves when handed to the transport, not when the device answers. */
  send(deviceId: string, frame: Uint8Array): Promise<void>;
  /** Registers the handler for frames coming up from devices; returns a function that removes it. */
  onMessage(handler: (frame: Uint8Array) => void): () => void;
  readonly stats: TransportStats;
  close(): Promise<void>;
}

/** A device's side of a transport. */
export interface DeviceTransport {
  readonly deviceId: string;
  onMessage(handler: (frame: Uint8Array) => void): () => void;
  send(frame: Uint8Array): Promise<void>;
}
