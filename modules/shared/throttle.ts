/** Runs `fn` at most once per `intervalMs`; calls in between coalesce into one trailing run (reported properties). */
export class Throttle {
  private last = -Infinity;
  private timer: NodeJS.Timeout | undefined;
  constructor(
    private readonly intervalMs: number,
    private readonly fn: () => void,
  ) {}
  schedule(): void {
    if (this.timer) return;
    const wait = Math.max(0, this.last + this.intervalMs - Date.now());
    this.timer = setTimeout(() => this.flush(), wait);
  }
  flush(): void {
    this.cancel();
    this.last = Date.now();
    this.fn();
  }
  cancel(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }
}
