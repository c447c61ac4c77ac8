/**
 * Time and arrivals as the round drivers see them. A driver (the synchronous rounds of core/round/server.ts, the
 * asynchronous FedBuff driver) never reads `Date.now()` or sets its own timers: it asks its clock for the next
 * device frame that arrives before some time, and feeds what it gets to the round engine with the clock's `now`.
 *
 *   RealClock     wall-clock time; frames as the transport delivers them (the simulator's default, tests)
 *   virtual       a fleet trace's clock (core/fleet/virtual-fleet.ts): a frame "arrives" when the trace says the
 *                 device would have downloaded, trained and uploaded it, so hours of fleet time run in minutes
 *
 * Both give the same driver code the same sequence of events; only the time base differs (epoch milliseconds for
 * the real clock, trace milliseconds since the trace's start for a virtual one).
 */
import type { ServerTransport } from "../protocol/transport";

/** A device frame and when it arrived (ms, the clock's time base). */
export interface Arrival {
  readonly frame: Uint8Array;
  readonly at: number;
}

export interface RoundClock {
  /** The current time in ms (the clock's time base). */
  now(): number;
  /**
   * The next device frame that arrives no later than `until` (ms; Infinity waits for one), or null once `until`
   * is reached (the clock then reads ≥ until) or `signal` is aborted. Never rejects.
   */
  next(until: number, signal?: AbortSignal): Promise<Arrival | null>;
  /** Stops listening to the transport. */
  close(): void;
}

/** Wall-clock time over a transport: frames are queued as they come and handed out in arrival order. */
export class RealClock implements RoundClock {
  private readonly queue: Arrival[] = [];
  private wake: (() => void) | undefined;
  private readonly off: () => void;

  constructor(transport: ServerTransport) {
    this.off = transport.onMessage((frame) => {
      this.queue.push({ frame, at: Date.now() });
      this.wake?.();
    });
  }

  now(): number {
    return Date.now();
  }

  async next(until: number, signal?: AbortSignal): Promise<Arrival | null> {
    for (;;) {
      const head = this.queue.shift();
      if (head) return head;
      if (signal?.aborted) return null;
      const wait = until - Date.now();
      if (wait <= 0) return null;
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          signal?.removeEventListener("abort", done);
          this.wake = undefined;
          resolve();
        };
        // setTimeout's longest delay is 2^31-1 ms; a longer (or infinite) wait just wakes and waits again.
        const timer = setTimeout(done, Math.min(wait, 2 ** 31 - 1));
        signal?.addEventListener("abort", done, { once: true });
        this.wake = done;
      });
    }
  }

  close(): void {
    this.off();
    this.wake?.();
  }
}
