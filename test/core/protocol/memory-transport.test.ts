/**
 * The in-process MemoryTransport, with the simulator's devices on it (startInProcessFleet, `--workers 0`), against
 * the ServerTransport contract; the worker-thread fleet runs the same suite in test/local/sim/worker-fleet.test.ts.
 */
import { serverTransportContract } from "./transport-contract";
import { startInProcessFleet } from "../../../local/sim/worker-fleet";

serverTransportContract("MemoryTransport (the simulator's devices in this thread)", (config, data) =>
  startInProcessFleet({ ...config, workers: 0 }, data),
);
