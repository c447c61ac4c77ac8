/**
 * Bounds MQTT packet sizes on the wire, before aedes buffers anything.
 *
 * aedes 1.2.0 hands every byte to mqtt-packet's parser, which keeps appending to a buffer list until the whole
 * packet announced by the fixed header has arrived; neither takes a maximum packet size. An unauthenticated
 * client announcing a 250 MB CONNECT could therefore make the hub buffer 250 MB. This guard sits between the
 * TLS socket and aedes (aedes.handle accepts any duplex stream), follows the MQTT 3.1.1 framing (section 2.2:
 * one fixed-header byte, then the Remaining Length as 1-4 base-128 bytes, then that many bytes) and closes the
 * connection as soon as a Remaining Length over the current bound is decoded, i.e. right after the fixed
 * header, before the body arrives:
 *   - until the client has authenticated: the first packet must be CONNECT and every packet at most
 *     PRE_AUTH_MAX_PACKET (a CONNECT carries a client id, a user name and a SAS token: well under 1 KB);
 *   - afterwards: MAX_PACKET, IoT Hub's largest message (a D2C message, 256 KB for body plus properties;
 *     twin patches are 32 KB and method payloads 128 KB, docs azure-iot.md "Limits") plus headroom for the
 *     topic and packet id. The exact 256 KB D2C check stays in the broker, which closes the connection too.
 */
import { Duplex } from "node:stream";
import type * as net from "node:net";

export const PRE_AUTH_MAX_PACKET = 64 * 1024;
/** 256 KiB (mqtt-broker's D2C_MAX_BYTES) + 16 KiB for the topic (ids up to 128 chars each) and packet id. */
export const MAX_PACKET = 256 * 1024 + 16 * 1024;

const CONNECT = 1;

/** Follows MQTT framing over a byte stream; `feed` returns why the stream must be closed, or undefined. */
export class MqttFrameGuard {
  /** Set once the client's CONNECT was accepted. */
  authenticated = false;
  private packets = 0;
  private state: "header" | "length" | "body" = "header";
  private type = 0;
  private length = 0;
  private multiplier = 1;
  private lengthBytes = 0;
  private remaining = 0;

  constructor(
    private readonly preAuthMax = PRE_AUTH_MAX_PACKET,
    private readonly max = MAX_PACKET,
  ) {}

  get limit(): number {
    return this.authenticated ? this.max : this.preAuthMax;
  }

  feed(chunk: Buffer): string | undefined {
    let i = 0;
    while (i < chunk.length) {
      if (this.state === "body") {
        const n = Math.min(this.remaining, chunk.length - i);
        this.remaining -= n;
        i += n;
        if (this.remaining === 0) this.state = "header";
        continue;
      }
      const b = chunk[i++];
      if (this.state === "header") {
        this.type = b >> 4;
        if (this.packets === 0 && this.type !== CONNECT) return "the first packet is not CONNECT";
        this.packets++;
        this.state = "length";
        this.length = 0;
        this.multiplier = 1;
        this.lengthBytes = 0;
        continue;
      }
      // Remaining Length: 7 bits per byte, least significant first, at most 4 bytes.
      this.length += (b & 0x7f) * this.multiplier;
      this.multiplier *= 128;
      this.lengthBytes++;
      if (b & 0x80) {
        if (this.lengthBytes === 4) return "malformed Remaining Length";
        continue;
      }
      if (this.length > this.limit) {
        return (
          `packet type ${this.type} announces ${this.length} bytes, over the ` +
          `${this.authenticated ? "" : "pre-authentication "}limit of ${this.limit}`
        );
      }
      this.remaining = this.length;
      this.state = this.remaining === 0 ? "header" : "body";
    }
    return undefined;
  }
}

/**
 * The stream aedes reads from and writes to: the socket's bytes pass through `guard` first; on a violation
 * `onViolation` is told why and the socket is destroyed without handing the offending bytes on.
 */
export class GuardedConnection extends Duplex {
  constructor(
    private readonly socket: net.Socket,
    readonly guard: MqttFrameGuard,
    onViolation: (reason: string) => void,
  ) {
    super({ allowHalfOpen: false });
    socket.on("data", (chunk: Buffer) => {
      if (this.destroyed) return;
      const why = guard.feed(chunk);
      if (why) {
        onViolation(why);
        socket.destroy();
        this.destroy();
        return;
      }
      if (!this.push(chunk)) socket.pause();
    });
    socket.on("end", () => this.push(null));
    socket.on("error", (e) => this.destroy(e));
    socket.on("close", () => this.destroy());
  }

  override _read(): void {
    this.socket.resume();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    this.forward(chunk, cb);
  }

  /** Everything aedes wrote meanwhile (mqtt-packet writes one packet in several pieces) in one socket write. */
  override _writev(chunks: { chunk: Buffer }[], cb: (e?: Error | null) => void): void {
    this.forward(Buffer.concat(chunks.map((c) => c.chunk)), cb);
  }

  /**
   * Hands bytes to the socket and calls back at once unless the socket's buffer is full, then on 'drain'.
   * Waiting for each write's own flush callback instead costs an event-loop turn per piece of every packet: with a
   * busy loop (a device training in the same process) a direct method then took tens of seconds to arrive.
   */
  private forward(bytes: Buffer, cb: (e?: Error | null) => void): void {
    const socket = this.socket;
    if (socket.destroyed) return cb(new Error("connection closed"));
    if (socket.write(bytes)) return cb();
    const done = (): void => {
      socket.off("drain", done);
      socket.off("close", done);
      cb(socket.destroyed ? new Error("connection closed") : null);
    };
    socket.on("drain", done);
    socket.on("close", done);
  }

  override _final(cb: (e?: Error | null) => void): void {
    this.socket.end();
    cb();
  }

  override _destroy(err: Error | null, cb: (e?: Error | null) => void): void {
    this.socket.destroy();
    cb(err);
  }
}
