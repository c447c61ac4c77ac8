/**
 * Headless Chromium for the dashboard's browser test and screenshot script: Debian's `chromium` package (the
 * machine's browser, driven by playwright-core; no browser download). FLOTILLA_CHROMIUM names another binary.
 */
import * as fs from "node:fs";
import { FlotillaError } from "../../core/errors";

const CANDIDATES = ["/usr/bin/chromium", "/usr/bin/chromium-browser"];

/** The Chromium binary, or E_DASHBOARD_BROWSER saying how to install it. */
export function chromiumPath(env: NodeJS.ProcessEnv = process.env): string {
  const wanted = env.FLOTILLA_CHROMIUM;
  const found = (wanted ? [wanted] : CANDIDATES).find((p) => {
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
  if (!found)
    throw new FlotillaError(
      "E_DASHBOARD_BROWSER",
      `no Chromium at ${wanted ?? CANDIDATES.join(" or ")}: install Debian's package (apt-get install -y chromium)` +
        (wanted ? "" : " or set FLOTILLA_CHROMIUM to a Chromium binary"),
    );
  return found;
}
