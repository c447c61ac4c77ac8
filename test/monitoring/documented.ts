// placeholder until i15-metrics is merged
export function documentedModuleMetrics(): Array<{ name: string; module: string }> {
  return [];
}
export function documentedMetricNames(): Set<string> {
  return new Set();
}
