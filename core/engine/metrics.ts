/**
 * Evaluation metrics of the model kinds, pure JS (no tfjs).
 *
 * Classifiers: mean softmax cross-entropy and argmax accuracy.
 * Autoencoder evaluation: the loss is the mean squared reconstruction error; the accuracy is anomaly-detection
 * accuracy with label 0 = normal and any other label = anomaly: a sample is flagged as an anomaly when its
 * reconstruction error (mean over features) exceeds the 95th percentile (linear interpolation) of the errors of
 * the label-0 samples of the evaluated data. Accuracy is NaN when the data has no label-0 sample.
 * Binary layer graphs: ROC AUC (rocAuc) besides accuracy.
 */

/** Sum of per-sample cross-entropies and number of correct argmax predictions for logits [n, c] vs labels. */
export function scoreLogits(
  logits: Float32Array,
  c: number,
  labels: ArrayLike<number>,
): { ce: number; correct: number } {
  const n = labels.length;
  let ce = 0;
  let correct = 0;
  for (let r = 0; r < n; r++) {
    const o = r * c;
    let best = 0;
    let max = logits[o];
    for (let k = 1; k < c; k++) {
      if (logits[o + k] > max) {
        max = logits[o + k];
        best = k;
      }
    }
    let s = 0;
    for (let k = 0; k < c; k++) s += Math.exp(logits[o + k] - max);
    const y = labels[r];
    ce += Math.log(s) + max - logits[o + y];
    if (best === y) correct++;
  }
  return { ce, correct };
}

/** q-quantile (0..1) of values with linear interpolation between order statistics. */
export function quantile(values: ArrayLike<number>, q: number): number {
  const a = Float64Array.from(values).sort();
  if (a.length === 0) return NaN;
  const pos = (a.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.min(lo + 1, a.length - 1);
  return a[lo] + (a[hi] - a[lo]) * (pos - lo);
}

/** Anomaly-detection accuracy: label 0 = normal; anomaly iff error > 95th percentile of the normals' errors. */
export function anomalyAccuracy(errors: ArrayLike<number>, labels: ArrayLike<number>): number {
  const normal: number[] = [];
  for (let i = 0; i < labels.length; i++) if (labels[i] === 0) normal.push(errors[i]);
  if (normal.length === 0) return NaN;
  const threshold = quantile(normal, 0.95);
  let correct = 0;
  for (let i = 0; i < labels.length; i++) if (errors[i] > threshold === (labels[i] !== 0)) correct++;
  return correct / labels.length;
}

/**
 * ROC AUC of scores for binary labels (1 = positive): the Mann–Whitney U statistic over positives × negatives,
 * U / (n₁·n₀), from average ranks (ties get their mean rank, i.e. count ½) — Hanley & McNeil 1982, "The meaning
 * and use of the area under a receiver operating characteristic (ROC) curve". NaN when a class is missing.
 */
export function rocAuc(scores: ArrayLike<number>, labels: ArrayLike<number>): number {
  const n = labels.length;
  const idx = Array.from({ length: n }, (_, i) => i).sort((a, b) => scores[a] - scores[b]);
  let rankSumPos = 0;
  let pos = 0;
  for (let i = 0; i < n;) {
    let j = i;
    while (j + 1 < n && scores[idx[j + 1]] === scores[idx[i]]) j++;
    const rank = (i + j) / 2 + 1; // mean 1-based rank of the tie group i..j
    for (let k = i; k <= j; k++) {
      if (labels[idx[k]] === 1) {
        rankSumPos += rank;
        pos++;
      }
    }
    i = j + 1;
  }
  const neg = n - pos;
  if (pos === 0 || neg === 0) return NaN;
  return (rankSumPos - (pos * (pos + 1)) / 2) / (pos * neg);
}
