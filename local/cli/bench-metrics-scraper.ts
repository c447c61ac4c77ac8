/**
 * The scraper of `flotilla bench metrics` (./bench-metrics.ts), in a process of its own as Prometheus or the
 * metrics-collector module would be: GETs every URL at once and then every `intervalMs`, and on `stop` answers with
 * what it scraped and its own CPU time, then exits.
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
  process.on("message", (m: Start | { type: "stop" }) => {
    if (m.type === "start") {
      const tick = (): void => {
        running = running.then(() => scrapeAll(m.urls));
      };
      tick();
      timer = setInterval(tick, m.intervalMs);
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
