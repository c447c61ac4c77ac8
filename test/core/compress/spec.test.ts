import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { parseCompression, specFromStages, type CodecStage } from "../../../core/compress";
import { codeOf } from "./helpers";

test("valid specs parse to their canonical text, which parses to the same spec", () => {
  const cases: [string, string, CodecStage[]][] = [
    ["none", "none", []],
    [" NONE ", "none", []],
    ["fp16", "fp16", [{ kind: "fp16" }]],
    ["int8", "int8", [{ kind: "int", bits: 8, block: 256 }]],
    ["int8:256", "int8", [{ kind: "int", bits: 8, block: 256 }]],
    ["int4:64", "int4:64", [{ kind: "int", bits: 4, block: 64 }]],
    ["int2:tensor", "int2:tensor", [{ kind: "int", bits: 2, block: 0 }]],
    ["int8:0", "int8:tensor", [{ kind: "int", bits: 8, block: 0 }]],
    ["int4:1", "int4:1", [{ kind: "int", bits: 4, block: 1 }]],
    ["qsgd:16", "qsgd:16", [{ kind: "qsgd", levels: 16, bucket: 512 }]],
    ["qsgd:16:512", "qsgd:16", [{ kind: "qsgd", levels: 16, bucket: 512 }]],
    ["qsgd:1:1024", "qsgd:1:1024", [{ kind: "qsgd", levels: 1, bucket: 1024 }]],
    ["qsgd:127", "qsgd:127", [{ kind: "qsgd", levels: 127, bucket: 512 }]],
    ["topk:0.01", "topk:0.01", [{ kind: "topk", fraction: 0.01 }]],
    ["topk:.010", "topk:0.01", [{ kind: "topk", fraction: 0.01 }]],
    ["topk:1e-3", "topk:0.001", [{ kind: "topk", fraction: 0.001 }]],
    ["topk:1e-7", "topk:1e-7", [{ kind: "topk", fraction: 1e-7 }]],
    ["randk:1", "randk:1", [{ kind: "randk", fraction: 1 }]],
    [
      " TopK:0.01 + Int8 ",
      "topk:0.01+int8",
      [
        { kind: "topk", fraction: 0.01 },
        { kind: "int", bits: 8, block: 256 },
      ],
    ],
    ["randk:0.05+fp16", "randk:0.05+fp16", [{ kind: "randk", fraction: 0.05 }, { kind: "fp16" }]],
    [
      "topk:0.1+qsgd:8:256",
      "topk:0.1+qsgd:8:256",
      [
        { kind: "topk", fraction: 0.1 },
        { kind: "qsgd", levels: 8, bucket: 256 },
      ],
    ],
  ];
  for (const [input, text, stages] of cases) {
    const spec = parseCompression(input);
    assert.equal(spec.text, text, input);
    assert.deepEqual(spec.stages, stages, input);
    assert.equal(spec.lossless, stages.length === 0, input);
    assert.equal(
      spec.sparse,
      stages.some((s) => s.kind === "topk" || s.kind === "randk"),
      input,
    );
    const again = parseCompression(spec.text);
    assert.equal(again.text, spec.text);
    assert.deepEqual(again.stages, spec.stages);
    assert.deepEqual(specFromStages(stages), spec);
  }
});

test("each bad spec is E_COMPRESS_SPEC with a message naming the bad part", () => {
  const cases: [string, RegExp][] = [
    ["", /empty/],
    ["   ", /empty/],
    ["none+int8", /'none'/],
    ["int8+none", /'none'/],
    ["int16", /unknown stage 'int16'/],
    ["gzip", /unknown stage 'gzip'/],
    ["fp16:2", /'fp16:2' takes 0 parameters/],
    ["int8:-1", /block size '-1'/],
    ["int8:abc", /block size 'abc'/],
    ["int8:1.5", /block size '1.5'/],
    ["int8:99999999", /block size '99999999'/],
    ["int8:256:2", /'int8:256:2' takes 0 to 1/],
    ["qsgd", /'qsgd' takes 1 to 2/],
    ["qsgd:0", /level count '0'/],
    ["qsgd:128", /level count '128'/],
    ["qsgd:4.5", /level count '4.5'/],
    ["qsgd:4:0", /bucket size '0'/],
    ["qsgd:4:1:2", /takes 1 to 2/],
    ["topk", /'topk' takes 1 parameter/],
    ["topk:0", /fraction '0'/],
    ["topk:1.5", /fraction '1.5'/],
    ["topk:-0.1", /fraction '-0.1'/],
    ["topk:abc", /fraction 'abc'/],
    ["randk:nan", /fraction 'nan'/],
    ["randk:infinity", /fraction 'infinity'/],
    ["topk:0x1", /fraction '0x1'/],
    ["topk:0.1+randk:0.1", /one sparsifier/],
    ["int8+topk:0.1", /sparsifier 'topk:0.1' must come first/],
    ["int8+fp16", /one value codec/],
    ["topk:0.1+int8+fp16", /one value codec/],
    ["topk:0.1++int8", /empty stage/],
    ["+int8", /empty stage/],
    ["int8+", /empty stage/],
  ];
  for (const [input, why] of cases) {
    let message = "";
    const code = codeOf(() => {
      try {
        parseCompression(input);
      } catch (e) {
        message = (e as Error).message;
        throw e;
      }
    });
    assert.equal(code, "E_COMPRESS_SPEC", input);
    assert.match(message, why, input);
    assert.ok(!message.includes("\n"), "one-line message");
  }
  assert.equal(
    codeOf(() => parseCompression(42 as unknown as string)),
    "E_COMPRESS_SPEC",
  );
});

test("specFromStages rejects malformed stage objects", () => {
  const bad: unknown[] = [
    [{ kind: "int", bits: 3, block: 256 }],
    [{ kind: "int", bits: 8, block: -1 }],
    [{ kind: "int", bits: 8, block: 1.5 }],
    [{ kind: "qsgd", levels: 0, bucket: 512 }],
    [{ kind: "qsgd", levels: 4, bucket: 0 }],
    [{ kind: "topk", fraction: 0 }],
    [{ kind: "randk", fraction: NaN }],
    [{ kind: "zip" }],
    [null],
    [{ kind: "fp16" }, { kind: "topk", fraction: 0.1 }],
    "int8",
  ];
  for (const stages of bad) {
    assert.equal(
      codeOf(() => specFromStages(stages as CodecStage[])),
      "E_COMPRESS_SPEC",
      JSON.stringify(stages),
    );
  }
});
