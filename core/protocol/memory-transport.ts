import { fail } from "../errors";
import type { ClientInfo } from "../strategies/strategy";
import type { DeviceTransport, ServerTransport, TransportStats } from "./transport";

type Handler = (frame: Uint8Array) => void;

/**
 * In-process transport: server and devices exchange frames through queues in one process. Delivery is always
 * asynchronous (setImmediate), and every frame is copied, so neither side can touch the other's memory, as on a
 * real wire.
 */
export class MemoryTransport implements ServerTransport {
  readonly stats: TransportStats = { uplinkBytes: 0, downlinkBytes: 0 };
  private readonly devices = new Map<string, { info: ClientInfo; handlers: Set<Handler>; online: boolean }>();
  private readonly serverHandlers = new Set<Handler>();
  private closed = false;

  /** Connects a device; returns its side of the transport. */
  connect(info: ClientInfo): DeviceTransport {
    if (this.devices.has(info.deviceId))
      fail("E_TRANSPORT_DUPLICATE", `device '${info.deviceId}' is already connected`);
    const entry = { info, handlers: new Set<Handler>(), online: true };
    this.devices.set(info.deviceId, entry);
    return {
      deviceId: info.deviceId,
      onMessage: (h) => {
        entry.handlers.add(h);
        return () => entry.handlers.delete(h);
      },
      send: async (frame) => {
        if (this.closed || !entry.online) fail("E_TRANSPORT_OFFLINE", `device '${info.deviceId}' is offline`);
        this.stats.uplinkBytes += frame.byteLength;
        const copy = frame.slice();
        setImmediate(() => this.serverHandlers.forEach((h) => h(copy)));
      },
    };
  }

  /** Takes a device off or back on the network (for fault tests). */
  setOnline(deviceId: string, online: boolean): void {
    const d = this.devices.get(deviceId);
    if (!d) fail("E_TRANSPORT_UNKNOWN_DEVICE", `unknown device '${deviceId}'`);
    d.online = online;
  }

  async listDevices(): Promise<ClientInfo[]> {
    return [...this.devices.values()].filter((d) => d.online).map((d) => d.info);
  }

  async send(deviceId: string, frame: Uint8Array): Promise<void> {
    if (this.closed) fail("E_TRANSPORT_CLOSED", "transport is closed");
    const d = this.devices.get(deviceId);
    if (!d) fail("E_TRANSPORT_UNKNOWN_DEVICE", `unknown device '${deviceId}'`);
    this.stats.downlinkBytes += frame.byteLength;
    if (!d.online) return; // lost on the way, as on a real network
    const copy = frame.slice();
    setImmediate(() => d.handlers.forEach((h) => h(copy)));
  }

  onMessage(handler: Handler): () => void {
    this.serverHandlers.add(handler);
    return () => this.serverHandlers.delete(handler);
  }

  async close(): Promise<void> {
    this.closed = true;
    this.serverHandlers.clear();
  }
}
