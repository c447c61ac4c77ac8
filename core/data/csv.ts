import { fail } from "../errors";

/** A decimal number as CSV exports write it (no hex, no Infinity/NaN). */
export const NUMBER = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;
export const UNSIGNED_INT = /^\d+$/;
export const FLOAT32_MAX = 3.4028234663852886e38;

/** A value shown inside a one-line error message. */
export function show(v: unknown): string {
  let s: string;
  try {
    s = typeof v === "string" ? JSON.stringify(v) : (JSON.stringify(v) ?? String(v));
  } catch {
    s = String(v);
  }
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

/**
 * Parse CSV text (RFC 4180, plus bare LF line ends and a leading BOM) into records with the 1-based line number
 * each starts on. Blank lines are skipped. Errors name `file` and the line.
 */
export function parseCsv(file: string, text: string): [string[], number][] {
  const records: [string[], number][] = [];
  let i = text.charCodeAt(0) === 0xfeff ? 1 : 0;
  let line = 1;
  const n = text.length;
  while (i < n) {
    // Skip a blank line.
    if (text[i] === "\n" || (text[i] === "\r" && text[i + 1] === "\n")) {
      i += text[i] === "\r" ? 2 : 1;
      line++;
      continue;
    }
    const startLine = line;
    const fields: string[] = [];
    for (;;) {
      let field = "";
      if (text[i] === '"') {
        const quoteLine = line;
        i++;
        for (;;) {
          if (i >= n) fail("E_DATA_PARSE", `${file}:${quoteLine}: quoted field is never closed`);
          const ch = text[i];
          if (ch === '"') {
            if (text[i + 1] === '"') {
              field += '"';
              i += 2;
              continue;
            }
            i++;
            break;
          }
          if (ch === "\n") line++;
          field += ch;
          i++;
        }
        if (i < n && text[i] !== "," && text[i] !== "\n" && !(text[i] === "\r" && text[i + 1] === "\n")) {
          fail("E_DATA_PARSE", `${file}:${line}: unexpected ${show(text[i])} after a closing quote`);
        }
      } else {
        const from = i;
        while (i < n && text[i] !== "," && text[i] !== "\n" && !(text[i] === "\r" && text[i + 1] === "\n")) {
          if (text[i] === '"') fail("E_DATA_PARSE", `${file}:${line}: quote inside an unquoted field`);
          i++;
        }
        field = text.slice(from, i);
      }
      fields.push(field);
      if (i < n && text[i] === ",") {
        i++;
        continue;
      }
      // End of record: newline or end of text.
      if (i < n) {
        i += text[i] === "\r" ? 2 : 1;
        line++;
      }
      break;
    }
    records.push([fields, startLine]);
  }
  return records;
}
