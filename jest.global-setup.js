// Before the suite: write the test fixtures too large to keep in git (the McMahan cnn as a Keras model, 6.5 MB of
// seeded weights; scripts/make-keras-fixtures.ts writes them bit-identically on every run). Needs `npm run build`.
const path = require("node:path");

module.exports = async () => {
  const { ensureGeneratedFixtures } = require("./dist/scripts/make-keras-fixtures.js");
  await ensureGeneratedFixtures(path.join(__dirname, "test", "fixtures", "keras"));
};
