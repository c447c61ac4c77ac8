import type { Command } from "commander";
import * as fs from "node:fs";
import * as path from "node:path";
import { fail } from "../../core/errors";
import { generateSynthetic, parseSyntheticSpec } from "../../core/fleet/synthetic";
import { summarize, type FleetTrace, type Spread } from "../../core/fleet/trace";
import { formatSessionsCsv, formatTrace, parseTrace } from "../../core/fleet/trace-file";
import { nonNegativeInt, positiveInt, SIM_LIMITS } from "../sim/config";

type RawOptions = Record<string, string | boolean | undefined>;

/** Devices of a synthetic trace when --devices is not given. */
const DEFAULT_DEVICES = 100;

/** Loads or generates the trace named by `source` (synthetic, synthetic:SPEC or a JSON lines file). */
export function loadTrace(source: string, o: RawOptions): FleetTrace {
  const devices =
    o.devices === undefined ? undefined : positiveInt("devices", o.devices as string, SIM_LIMITS.devices);
  if (source === "synthetic" || source.startsWith("synthetic:")) {
    const seed = nonNegativeInt("seed", (o.seed as string | undefined) ?? "42", SIM_LIMITS.seed);
    return generateSynthetic(parseSyntheticSpec(source), devices ?? DEFAULT_DEVICES, seed);
  }
  let text: string;
  try {
    text = fs.readFileSync(source, "utf8");
  } catch (e) {
    fail("E_TRACE_FILE", `${source}: cannot read: ${(e as Error).message.split("\n")[0]}`, { cause: e });
  }
  const trace = parseTrace(text, source);
  return devices === undefined ? trace : { ...trace, devices: trace.devices.slice(0, devices) };
}

/** Runs `flotilla fleet-trace`; returns the text it prints. Exported for tests. */
export function runFleetTrace(source: string, o: RawOptions): string {
  const trace = loadTrace(source, o);
  const write = (flag: string, file: string, text: () => string) => {
    try {
      fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
      fs.writeFileSync(file, text());
    } catch (e) {
      fail("E_CONFIG_OUT", `${flag} ${file}: cannot write: ${(e as Error).message.split("\n")[0]}`, {
        cause: e,
      });
    }
  };
  const out = o.out as string | undefined;
  if (out !== undefined) write("--out", out, () => formatTrace(trace));
  const csv = o.sessionsCsv as string | undefined;
  if (csv !== undefined) write("--sessions-csv", csv, () => formatSessionsCsv(trace));
  const s = summarize(trace);
  if (o.json) return JSON.stringify(s);
  const g = (x: number) => Number(x.toPrecision(3)).toLocaleString("en-US");
  const row = (name: string, v: Spread, unit: string) =>
    `  ${name.padEnd(22)} p10 ${g(v.p10)}  p50 ${g(v.p50)}  p90 ${g(v.p90)} ${unit} (p90/p10 ${(v.p90 / v.p10).toFixed(1)}x)`;
  return [
    `${s.devices} devices over ${g(s.horizonS / 3600)} h${out ? `, written to ${out}` : ""}`,
    row("speed", s.samplesPerSecond, "samples/s"),
    row("uplink", s.uplinkBytesPerSecond, "B/s"),
    row("downlink", s.downlinkBytesPerSecond, "B/s"),
    row("rtt", s.rttMs, "ms"),
    `  mean availability ${(100 * s.meanAvailability).toFixed(1)}%, intermittent ${(100 * s.intermittentShare).toFixed(1)}%`,
  ].join("\n");
}

/** `flotilla fleet-trace`: generate or read a device trace, print its summary, optionally write it. */
export function registerFleetTraceCommand(program: Command): Command {
  return program
    .command("fleet-trace")
    .description(
      "device traces (speed, bandwidth, latency, availability): generate synthetic[:SPEC] or read a JSON lines file, " +
        "print a summary (docs/fleet-traces.md)",
    )
    .argument("<source>", "synthetic | synthetic:KEY=VALUE,... | FILE")
    .option(
      "--devices <n>",
      `devices (synthetic: default ${DEFAULT_DEVICES}; a file: keep the first n; at most ${SIM_LIMITS.devices})`,
    )
    .option("--out <file>", "write the trace here (JSON lines)")
    .option("--sessions-csv <file>", "also write the sessions as CSV: deviceId,kind,startS,endS")
    .option("--seed <n>", "seed of the synthetic generator (0 to 2^32-1, default 42)")
    .option("--json", "print the summary as one JSON object")
    .action((source: string, opts: RawOptions) => {
      console.log(runFleetTrace(source, opts));
    });
}
