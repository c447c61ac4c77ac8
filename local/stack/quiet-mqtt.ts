/**
 * The stack's device transport: azure-iot-device-mqtt's `Mqtt` without its two debug serialisations of every
 * message body, which cost most of the local stack's event loop at 100 devices (issue 12, docs/benchmarks.md
 * "Cheaper rounds"):
 *
 * - `sendOutputEvent` builds `debug('sendOutputEvent ' + JSON.stringify(message))` whether or not debugging is on:
 *   a 255,000-byte chunk body becomes a JSON array of 255,000 numbers (Buffer#toJSON), on every module output
 *   (trainer → quantizer → update-queue → upstream: three per chunk);
 * - `_dispatchMqttMessage` builds `debug(JSON.stringify(payload.toString()))` for every message received: the
 *   binary body decoded as UTF-8 and escaped.
 *
 * Both overrides do what the SDK's methods do (azure-iot-device-mqtt 1.16.4, dist/mqtt.js) minus the debug line.
 * They use two internals of that class, `_fsm` and `_topics`: this file is the one place that does, and
 * test/local/stack/quiet-mqtt.test.ts checks them against the installed SDK. On a real device the same lines cost
 * each edge module its own CPU; the modules' client factory can take this transport too.
 */
import type { Message } from "azure-iot-common";
import { Mqtt } from "azure-iot-device-mqtt";

/** What the overrides read from the SDK's Mqtt transport (private there). */
interface MqttInternals {
  _fsm: {
    handle(
      action: "sendEvent",
      message: Message,
      properties: Record<string, string>,
      done: (err?: Error, puback?: unknown) => void,
    ): void;
  };
  _topics: Record<string, { topicMatchRegex: RegExp; handler: (topic: string, payload: Buffer) => void }>;
}

type SendDone = Parameters<Mqtt["sendOutputEvent"]>[2];

export class QuietMqtt extends Mqtt {
  override sendOutputEvent(outputName: string, message: Message, done: SendDone): void {
    const self = this as unknown as MqttInternals;
    self._fsm.handle("sendEvent", message, { "$.on": outputName }, (err, puback) => {
      if (err) done(err);
      else done(undefined, puback as Parameters<SendDone>[1]);
    });
  }
}

/** The SDK binds `_dispatchMqttMessage` in its constructor (`this._dispatchMqttMessage.bind(this)`), so the
 *  subclass's prototype method is the one bound. It is private in the SDK's types: defined here, not overridden. */
Object.defineProperty(QuietMqtt.prototype, "_dispatchMqttMessage", {
  configurable: true,
  writable: true,
  value: function dispatchQuietly(this: MqttInternals, topic: string, payload: Buffer): void {
    for (const key of Object.keys(this._topics)) {
      const t = this._topics[key];
      // The SDK's regexes may be global (stateful): start each test from the beginning, as it does.
      t.topicMatchRegex.lastIndex = 0;
      if (t.topicMatchRegex.test(topic)) {
        t.handler(topic, payload);
        return;
      }
    }
  },
});

/** True when the installed SDK still has what QuietMqtt relies on (checked by its test). */
export function quietMqttFits(): boolean {
  const proto = Mqtt.prototype as unknown as Record<string, unknown>;
  const src = (f: unknown) => (typeof f === "function" ? Function.prototype.toString.call(f) : "");
  return (
    src(proto.sendOutputEvent).includes("this._fsm.handle('sendEvent', message, { '$.on': outputName }") &&
    src(proto._dispatchMqttMessage).includes("this._topics") &&
    src(Mqtt).includes("this._dispatchMqttMessage.bind(this)")
  );
}
