/**
 * The scraper of `flotilla bench metrics` (./bench-metrics.ts), in a process of its own as Prometheus or the
 * metrics-collector module would be: GETs every URL at once and then every `intervalMs`; `counts` answers with what
 * it scraped so far and its own CPU time, `burst` does `count` scrapes back to back first (the periodic ones stop),
 * `stop` answers and exits.
 */
interface Start {
  readonly type: "start";
  readonly urls: readonly string[];
  readonly intervalMs: number;
}

if (require.main === module) {
  let scrapes = 0;
  let bytes = 0;
  let failures = 0;
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> = Promise.resolve();
  const scrapeAll = async (urls: readonly string[]): Promise<void> => {
    await Promise.all(
      urls.map(async (url) => {
        try {
          const res = await fetch(url);
          bytes += (await res.arrayBuffer()).byteLength;
          if (res.ok) scrapes++;
          else failures++;
        } catch {
          failures++;
        }
      }),
    );
  };
  process.on("disconnect", () => process.exit(0));
  let urls: readonly string[] = [];
  process.on("message", (m: Start | { type: "stop" | "counts" } | { type: "burst"; count: number }) => {
    if (m.type === "start") {
      urls = m.urls;
      const tick = (): void => {
        running = running.then(() => scrapeAll(m.urls));
      };
      tick();
      timer = setInterval(tick, m.intervalMs);
    } else if (m.type === "burst") {
      // `count` scrapes of every URL back to back (the periodic ones paused), then the counts.
      if (timer) clearInterval(timer);
      timer = undefined;
      running = running.then(async () => {
        for (let i = 0; i < m.count; i++) await scrapeAll(urls);
      });
      void running.then(() =>
        process.send?.({ type: "counts", scrapes, bytes, failures, cpu: process.cpuUsage() }),
      );
    } else if (m.type === "counts") {
      // Between two scrapes (the one in progress, if any, finishes first).
      void running.then(() =>
        process.send?.({ type: "counts", scrapes, bytes, failures, cpu: process.cpuUsage() }),
      );
    } else {
      if (timer) clearInterval(timer);
      void running.then(() => {
        process.send?.({ type: "stopped", scrapes, bytes, failures, cpu: process.cpuUsage() }, () =>
          process.exit(0),
        );
      });
    }
  });
}
