#!/usr/bin/env node
"use strict";
// The `flotilla` command. The TypeScript sources are compiled to dist/ by `npm install` (prepare) or `npm run build`.
const path = require("node:path");
const fs = require("node:fs");
const entry = path.join(__dirname, "..", "dist", "local", "cli", "main.js");
if (!fs.existsSync(entry)) {
  console.error("flotilla: E_NOT_BUILT: run `npm install` (or `npm run build`) first");
  process.exit(2);
}
require(entry)
  .main(process.argv)
  .then(
    (code) => process.exit(code ?? 0),
    (err) => {
      console.error(`flotilla: ${err && err.message ? err.message : String(err)}`);
      process.exit(1);
    },
  );
