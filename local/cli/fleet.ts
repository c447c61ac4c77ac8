/**
 * `flotilla fleet`: the operator's commands over the fleet's module twins (docs/operations.md). The work is in
 * ./fleet-ops and ./fleet-rollout, loaded by the command that runs (azure-iothub is not loaded to print help or a
 * usage error).
 */
import { Command } from "commander";
import { fail } from "../../core/errors";

type RawOptions = Record<string, string | boolean | undefined>;

/** Largest --wait (seconds). */
export const MAX_WAIT_S = 3600;

function hubOptions(cmd: Command): Command {
  return cmd
    .option(
      "--hub-connection-string <cs>",
      "an IoT Hub service connection string (default: $IOTHUB_SERVICE_CONNECTION_STRING, else .flotilla/hub.json)",
    )
    .option("--hub-ca <file>", "the CA certificate of a local hub (default: $FLOTILLA_HUB_CA)")
    .option(
      "--hub-info <file>",
      "a local hub's connection info, as `flotilla hub` writes it (.flotilla/hub.json)",
    );
}

async function hubFrom(o: RawOptions) {
  const { openFleetHub } = await import("./fleet-hub.js");
  return openFleetHub({
    ...(typeof o.hubConnectionString === "string" ? { hubConnectionString: o.hubConnectionString } : {}),
    ...(typeof o.hubCa === "string" ? { hubCa: o.hubCa } : {}),
    ...(typeof o.hubInfo === "string" ? { hubInfo: o.hubInfo } : {}),
  });
}

function str(o: RawOptions, k: string): string | undefined {
  return typeof o[k] === "string" ? (o[k] as string) : undefined;
}

function waitSeconds(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (text.trim() === "" || !Number.isFinite(n) || n < 0 || n > MAX_WAIT_S)
    fail("E_CONFIG_RANGE", `--wait must be a number of seconds from 0 to ${MAX_WAIT_S}, got '${text}'`);
  return n;
}

/** A progress bar on stderr for long writes (interactive terminals only). */
async function progressBar(label: string): Promise<{
  update: (done: number, total: number) => void;
  stop: () => void;
}> {
  if (!process.stderr.isTTY) return { update: () => undefined, stop: () => undefined };
  const { SingleBar, Presets } = await import("cli-progress");
  const bar = new SingleBar(
    { format: `${label} [{bar}] {value}/{total} devices`, hideCursor: true, stream: process.stderr },
    Presets.shades_classic,
  );
  let started = false;
  return {
    update(done, total) {
      if (total < 2) return;
      if (!started) {
        bar.start(total, 0);
        started = true;
      }
      bar.update(done);
    },
    stop: () => {
      if (started) bar.stop();
    },
  };
}

/** Registers `flotilla fleet` and its subcommands; `setExit` receives each command's exit code. */
export function registerFleetCommand(program: Command, setExit: (code: number) => void): Command {
  const fleet = program
    .command("fleet")
    .description(
      "the fleet's module twins: list devices, set writable properties, show acknowledgements, roll out configurations (docs/operations.md)",
    );

  hubOptions(
    fleet
      .command("list")
      .description("devices with their capabilities, policy, state and modules' model IDs")
      .option("--where <condition>", "a device twin query condition, e.g. \"tags.site = 'berlin'\"")
      .option("--json", "print JSON"),
  ).action(async (o: RawOptions) => {
    const { runList } = await import("./fleet-ops.js");
    console.log(await runList(await hubFrom(o), { where: str(o, "where"), json: o.json === true }));
  });

  hubOptions(
    fleet
      .command("set")
      .description(
        "set writable properties of a module on one device or on every device a tag query selects (values are JSON)",
      )
      .argument("<module>", "trainer | update-queue | quantizer | profiler")
      .argument("<assignments...>", "<name>=<json value> (null: back to the module's default)")
      .option("--device <id>", "one device")
      .option("--where <condition>", "a device twin query condition, e.g. \"tags.site = 'berlin'\"")
      .option("--wait <seconds>", `wait this long for the modules' acknowledgements (at most ${MAX_WAIT_S})`)
      .option("--json", "print JSON"),
  ).action(async (module: string, assignments: string[], o: RawOptions) => {
    const device = str(o, "device");
    const where = str(o, "where");
    if ((device === undefined) === (where === undefined))
      fail("E_CONFIG_MISSING_OPTION", "give exactly one of --device <id> or --where <condition>");
    const waitS = waitSeconds(str(o, "wait"));
    const { parseAssignments } = await import("./fleet-modules.js");
    parseAssignments(module, assignments); // a bad value is refused before the hub is contacted
    const { runSet } = await import("./fleet-ops.js");
    const bar = await progressBar(`setting ${module}`);
    try {
      const r = await runSet(await hubFrom(o), {
        module,
        assignments,
        ...(device !== undefined ? { device } : {}),
        ...(where !== undefined ? { where } : {}),
        ...(waitS !== undefined ? { waitS } : {}),
        json: o.json === true,
        progress: bar.update,
      });
      bar.stop();
      console.log(r.text);
      if (!r.ok) setExit(3);
    } finally {
      bar.stop();
    }
  });

  hubOptions(
    fleet
      .command("acks")
      .description(
        "per device, module and property: the desired value, the module's ack and whether it is current",
      )
      .option("--device <id>", "one device")
      .option("--where <condition>", "a device twin query condition")
      .option("--module <name>", "one module (default: all four)")
      .option("--json", "print JSON"),
  ).action(async (o: RawOptions) => {
    const { runAcks } = await import("./fleet-ops.js");
    console.log(
      await runAcks(await hubFrom(o), {
        device: str(o, "device"),
        where: str(o, "where"),
        module: str(o, "module"),
        json: o.json === true,
      }),
    );
  });

  hubOptions(
    fleet
      .command("rollout")
      .description(
        "a fleet-wide rollout: an automatic device management configuration setting a module's writable properties on every module twin the target condition selects",
      )
      .argument("<name>", "the configuration id (lowercase letters, digits and -+%_*!')")
      .argument("<module>", "trainer | update-queue | quantizer | profiler")
      .argument("<assignments...>", "<name>=<json value>")
      .requiredOption(
        "--target <condition>",
        "which module twins: a condition on the module twins' tags or reported properties, e.g. \"tags.ring = 'canary'\"",
      )
      .option("--priority <n>", "higher wins where configurations overlap (default 10)")
      .option("--json", "print JSON"),
  ).action(async (name: string, module: string, assignments: string[], o: RawOptions) => {
    const { parseAssignments } = await import("./fleet-modules.js");
    parseAssignments(module, assignments);
    const { runRollout } = await import("./fleet-rollout.js");
    console.log(
      await runRollout(await hubFrom(o), {
        name,
        module,
        assignments,
        target: str(o, "target")!,
        priority: str(o, "priority"),
        json: o.json === true,
      }),
    );
  });

  hubOptions(
    fleet
      .command("rollouts")
      .description("the hub's automatic device management configurations with their metrics")
      .option("--json", "print JSON"),
  ).action(async (o: RawOptions) => {
    const { runRollouts } = await import("./fleet-rollout.js");
    console.log(await runRollouts(await hubFrom(o), { json: o.json === true }));
  });

  return fleet;
}
