import { EventEmitter } from "node:events";
import { Message } from "azure-iot-device";
import type {
  MethodRequestLike,
  MethodResponseLike,
  TwinLike,
  UpdateQueueClient,
} from "../../../modules/update-queue/src/main";

/** A module twin as the SDK exposes it: desired properties, `reported.update`, `properties.desired` events. */
export class FakeTwin extends EventEmitter implements TwinLike {
  readonly reportedPatches: Record<string, unknown>[] = [];
  properties: TwinLike["properties"];
  constructor(desired: Record<string, unknown> = {}) {
    super();
    this.properties = {
      desired: { ...desired, $version: 1 },
      reported: {
        update: (patch: Record<string, unknown>, done: (err?: Error) => void) => {
          this.reportedPatches.push(patch);
          setImmediate(() => done());
        },
      },
    };
  }
  /** The hub sends a desired-properties patch. */
  patchDesired(delta: Record<string, unknown>): void {
    Object.assign(this.properties.desired, delta);
    this.emit("properties.desired", delta);
  }
}

/**
 * An in-memory ModuleClient: records outputs, completions, twin GETs and method registrations; the link can be
 * failed, dropped and restored.
 */
export class FakeModuleClient extends EventEmitter implements UpdateQueueClient {
  readonly outputs: { output: string; msg: Message }[] = [];
  readonly completed: Message[] = [];
  readonly methods = new Map<string, (req?: MethodRequestLike, res?: MethodResponseLike) => void>();
  twin = new FakeTwin();
  opens = 0;
  closes = 0;
  getTwinCalls = 0;
  /** Number of upcoming open() calls that fail. */
  failOpens = 0;
  linkUp = true;
  onComplete: (msg: Message) => void = () => {};

  async open(): Promise<unknown> {
    this.opens++;
    if (this.failOpens > 0) {
      this.failOpens--;
      throw new Error("connection refused");
    }
    this.linkUp = true;
    // As azure-iot-device-mqtt 1.16: the transport emits `connected` (→ client `connect`) before open's callback.
    this.emit("connect");
    return {};
  }
  async close(): Promise<unknown> {
    this.closes++;
    this.linkUp = false;
    return {};
  }
  async complete(msg: Message): Promise<unknown> {
    this.onComplete(msg);
    this.completed.push(msg);
    return {};
  }
  async sendOutputEvent(output: string, msg: Message): Promise<unknown> {
    await new Promise((r) => setImmediate(r));
    if (!this.linkUp) throw new Error("not connected");
    this.outputs.push({ output, msg });
    return {};
  }
  /** Number of upcoming getTwin() calls that never answer (the SDK has no timeout of its own). */
  hangTwinGets = 0;
  async getTwin(): Promise<TwinLike> {
    this.getTwinCalls++;
    if (this.hangTwinGets > 0) {
      this.hangTwinGets--;
      return new Promise<TwinLike>(() => {});
    }
    return this.twin;
  }
  onMethod(name: string, cb: (req?: MethodRequestLike, res?: MethodResponseLike) => void): void {
    if (this.methods.has(name)) throw new Error(`A handler for ${name} has already been registered`);
    this.methods.set(name, cb);
  }

  /** edgeHub delivers a message on a module input. */
  deliver(inputName: string, body: Uint8Array, properties: Record<string, string> = {}): Message {
    const msg = new Message(Buffer.from(body));
    for (const [k, v] of Object.entries(properties)) msg.properties.add(k, v);
    this.emit("inputMessage", inputName, msg);
    return msg;
  }

  /** The hub invokes a direct method; resolves with what the module answered. */
  invoke(name: string, payload: unknown): Promise<{ status: number; payload: unknown }> {
    const handler = this.methods.get(name);
    if (!handler) return Promise.resolve({ status: 404, payload: null });
    return new Promise((resolve) => {
      handler(
        { payload },
        {
          send: async (status: number, body?: unknown) => resolve({ status, payload: body }),
        },
      );
    });
  }

  /** The link drops: sends fail, and the SDK (having given up retrying) emits `disconnect`. */
  drop(): void {
    this.linkUp = false;
    this.emit("disconnect", new Error("socket closed"));
  }

  /** Chunks sent upstream, as {updateId, chunkIndex}. */
  sentChunks(): { updateId: string; chunkIndex: number; messageId: string }[] {
    return this.outputs.map(({ msg }) => ({
      updateId: String(msg.properties.getValue("updateId")),
      chunkIndex: Number(msg.properties.getValue("chunkIndex")),
      messageId: msg.messageId,
    }));
  }
}
