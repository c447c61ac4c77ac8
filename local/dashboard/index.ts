/** The live fleet dashboard (docs/dashboard.md): sources, view model, server and page. */
import { isFlotillaError } from "../../core/errors";
import type { DashboardError } from "./model";
import { startDashboard, type Dashboard, type DashboardOptions } from "./server";
import {
  functionApi,
  hubConnectionFromInfo,
  twinSource,
  type FunctionApi,
  type HubConnection,
  type TwinSource,
} from "./sources";

export { startDashboard, DEFAULT_DASHBOARD_PORT, type Dashboard, type DashboardOptions } from "./server";
export type { Snapshot, DeviceRow, RoundPoint, DeviceHistory, DashboardError } from "./model";
export { functionApi, twinSource, hubConnectionFromInfo, type HubConnection } from "./sources";

/** Where the dashboard reads from, as the CLI gets it. */
export interface DashboardSourcesConfig {
  readonly functionUrl?: string;
  readonly functionKey?: string;
  /** A service connection string, or the hub info file of `flotilla hub` (hubInfo). */
  readonly hubConnectionString?: string;
  readonly hubCaPath?: string;
  readonly hubInfo?: string;
}

/**
 * The sources from their configuration. A source whose configuration is unusable (a URL that is not http(s), a
 * malformed connection string, an unreadable hub info file) is not an exception: it becomes a start error the page
 * shows, and the other source still runs.
 */
export function dashboardSources(c: DashboardSourcesConfig): {
  functionApi?: FunctionApi;
  twins?: TwinSource;
  startErrors: DashboardError[];
} {
  const startErrors: DashboardError[] = [];
  const attempt = <T>(source: string, make: () => T): T | undefined => {
    try {
      return make();
    } catch (e) {
      if (!isFlotillaError(e)) throw e;
      startErrors.push({ source, code: e.code, message: e.message });
      return undefined;
    }
  };
  const api =
    c.functionUrl !== undefined
      ? attempt("function", () => functionApi({ url: c.functionUrl!, key: c.functionKey }))
      : undefined;
  let twins: TwinSource | undefined;
  if (c.hubInfo !== undefined || c.hubConnectionString !== undefined) {
    twins = attempt("hub", () => {
      const conn: HubConnection =
        c.hubInfo !== undefined
          ? hubConnectionFromInfo(c.hubInfo)
          : { connectionString: c.hubConnectionString!, ...(c.hubCaPath ? { caCertPath: c.hubCaPath } : {}) };
      return twinSource(conn);
    });
  }
  return { ...(api ? { functionApi: api } : {}), ...(twins ? { twins } : {}), startErrors };
}

/** Starts a dashboard from a sources configuration (dashboardSources) and the server's options. */
export function startDashboardFrom(
  sources: DashboardSourcesConfig,
  opts: Omit<DashboardOptions, "functionApi" | "twins" | "startErrors">,
): Promise<Dashboard> {
  return startDashboard({ ...opts, ...dashboardSources(sources) });
}
