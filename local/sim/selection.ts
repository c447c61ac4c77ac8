/**
 * Participant selection in the simulator (--selection): the selector of core/selection picks among the devices the
 * transport offers (with a fleet trace: the devices online and idle at virtual now, profiled from the trace), and
 * the strategy's configureFit sees only the picked devices. The history (picks, completions with their training
 * loss, samples and measured duration, timeouts) is kept from the rounds' outcomes, as the Azure Function keeps it.
 */
import type { VirtualFleet } from "../../core/fleet/virtual-fleet";
import { createSelector, SelectionHistory, type DeviceProfile } from "../../core/selection";
import type { RoundRecord } from "../../core/round/server";
import type { ClientInfo } from "../../core/strategies/strategy";

export interface SimSelection {
  readonly spec: string;
  readonly history: SelectionHistory;
  /**
   * Per device, the longest run of consecutive rounds (async: model versions) in which it was offered (online and
   * idle) and not picked: the participation floor's measure (with `oort:floor=N` it stays ≤ N whenever the fleet allows it).
   */
  readonly longestWait: ReadonlyMap<string, number>;
  /** JobOptions.selectParticipants. */
  pick(round: number, available: readonly ClientInfo[], count?: number): ClientInfo[];
  /** Records a round's outcome (or an async dispatch's) into the history. */
  record(
    rec: Pick<RoundRecord, "completed" | "failures" | "participants" | "uplinkBytes" | "downlinkBytes">,
  ): void;
}

export function simSelection(
  spec: string,
  o: {
    count: number;
    seed: number;
    deadlineS: number;
    epochs: number;
    /** Bytes of the model as sent and of an update as sent, before the first round measured them. */
    modelBytes: number;
    fleet?: VirtualFleet;
  },
): SimSelection {
  const selector = createSelector(spec);
  const history = new SelectionHistory();
  let downloadBytes = o.modelBytes;
  let uploadBytes = o.modelBytes;
  const waiting = new Map<string, number>();
  const longestWait = new Map<string, number>();
  /** The round in which a device's wait was last counted (a round counts once however many selections it has). */
  const countedIn = new Map<string, number>();
  return {
    spec: selector.spec,
    history,
    longestWait,
    pick(round, available, count = o.count) {
      const profiles: DeviceProfile[] = o.fleet
        ? o.fleet.profiles(available)
        : available.map((d) => ({
            deviceId: d.deviceId,
            numSamples: d.numSamples,
            samplesPerSecond: d.samplesPerSecond,
          }));
      const ids = selector.select(profiles, history, {
        round,
        count,
        seed: o.seed,
        deadlineS: o.deadlineS,
        downloadBytes,
        uploadBytes,
        epochs: o.epochs,
      });
      history.recordSelected(round, ids);
      // Waits count rounds (async: model versions, several selections each), not calls.
      const chosen = new Set(ids);
      for (const p of profiles) {
        const id = p.deviceId;
        if (chosen.has(id)) waiting.set(id, 0);
        else if (countedIn.get(id) !== round) waiting.set(id, (waiting.get(id) ?? 0) + 1);
        countedIn.set(id, round);
        const w = waiting.get(id) ?? 0;
        if (w > (longestWait.get(id) ?? 0)) longestWait.set(id, w);
      }
      const byId = new Map(available.map((d) => [d.deviceId, d]));
      return ids.flatMap((id) => byId.get(id) ?? []);
    },
    record(rec) {
      for (const id of rec.completed) {
        const d = o.fleet?.delivered.get(id);
        history.recordCompleted(
          id,
          d ? { loss: d.loss, samples: d.numSamples, durationS: (d.at - d.sentAt) / 1000 } : {},
        );
      }
      for (const f of rec.failures) history.recordTimeout(f.deviceId);
      // Measured sizes for the next estimates (per participant, as sent and as received).
      const n = rec.participants.length;
      if (n > 0 && rec.downlinkBytes > 0) downloadBytes = rec.downlinkBytes / n;
      if (rec.completed.length > 0 && rec.uplinkBytes > 0)
        uploadBytes = rec.uplinkBytes / rec.completed.length;
    },
  };
}
