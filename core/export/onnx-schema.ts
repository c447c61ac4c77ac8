/**
 * The ONNX protobuf schema, for protobufjs.
 *
 * Source: onnx/onnx, file `onnx/onnx.proto3` (the proto3 rendering generated from onnx.in.proto), at commit
 * f34fb1ec57079c9a462f9ad12a07efa981e1c9d8 (schema IR_VERSION 7, the ONNX 1.8 line), MIT licensed,
 * Copyright (c) ONNX Project Contributors. Comments are trimmed; messages, fields, numbers and enums are as in
 * the source. Later IR versions only add fields and enum values (ONNX's versioning rules keep the wire format
 * backward compatible), so this subset encodes models of later IR versions too: `ir_version` is a plain int64
 * and the exporter writes 8 (opset 17), which this schema carries unchanged.
 */
import * as protobuf from "protobufjs";

export const ONNX_PROTO3 = `
syntax = "proto3";

package onnx;

enum Version {
  _START_VERSION = 0;
  IR_VERSION_2017_10_10 = 0x0000000000000001;
  IR_VERSION_2017_10_30 = 0x0000000000000002;
  IR_VERSION_2017_11_3 = 0x0000000000000003;
  IR_VERSION_2019_1_22 = 0x0000000000000004;
  IR_VERSION_2019_3_18 = 0x0000000000000005;
  IR_VERSION_2019_9_19 = 0x0000000000000006;
  IR_VERSION = 0x0000000000000007;
}

message AttributeProto {
  enum AttributeType {
    UNDEFINED = 0;
    FLOAT = 1;
    INT = 2;
    STRING = 3;
    TENSOR = 4;
    GRAPH = 5;
    SPARSE_TENSOR = 11;

    FLOATS = 6;
    INTS = 7;
    STRINGS = 8;
    TENSORS = 9;
    GRAPHS = 10;
    SPARSE_TENSORS = 12;
  }

  string name = 1;
  string ref_attr_name = 21;
  string doc_string = 13;
  AttributeType type = 20;

  float f = 2;
  int64 i = 3;
  bytes s = 4;
  TensorProto t = 5;
  GraphProto g = 6;
  SparseTensorProto sparse_tensor = 22;

  repeated float floats = 7;
  repeated int64 ints = 8;
  repeated bytes strings = 9;
  repeated TensorProto tensors = 10;
  repeated GraphProto graphs = 11;
  repeated SparseTensorProto sparse_tensors = 23;
}

message ValueInfoProto {
  string name = 1;
  TypeProto type = 2;
  string doc_string = 3;
}

message NodeProto {
  repeated string input = 1;
  repeated string output = 2;
  string name = 3;
  string op_type = 4;
  string domain = 7;
  repeated AttributeProto attribute = 5;
  string doc_string = 6;
}

message TrainingInfoProto {
  GraphProto initialization = 1;
  GraphProto algorithm = 2;
  repeated StringStringEntryProto initialization_binding = 3;
  repeated StringStringEntryProto update_binding = 4;
}

message ModelProto {
  int64 ir_version = 1;
  repeated OperatorSetIdProto opset_import = 8;
  string producer_name = 2;
  string producer_version = 3;
  string domain = 4;
  int64 model_version = 5;
  string doc_string = 6;
  GraphProto graph = 7;
  repeated StringStringEntryProto metadata_props = 14;
  repeated TrainingInfoProto training_info = 20;
};

message StringStringEntryProto {
  string key = 1;
  string value= 2;
};

message TensorAnnotation {
  string tensor_name = 1;
  repeated StringStringEntryProto quant_parameter_tensor_names = 2;
}

message GraphProto {
  repeated NodeProto node = 1;
  string name = 2;
  repeated TensorProto initializer = 5;
  repeated SparseTensorProto sparse_initializer = 15;
  string doc_string = 10;
  repeated ValueInfoProto input = 11;
  repeated ValueInfoProto output = 12;
  repeated ValueInfoProto value_info = 13;
  repeated TensorAnnotation quantization_annotation = 14;
}

message TensorProto {
  enum DataType {
    UNDEFINED = 0;
    FLOAT = 1;
    UINT8 = 2;
    INT8 = 3;
    UINT16 = 4;
    INT16 = 5;
    INT32 = 6;
    INT64 = 7;
    STRING = 8;
    BOOL = 9;
    FLOAT16 = 10;
    DOUBLE = 11;
    UINT32 = 12;
    UINT64 = 13;
    COMPLEX64 = 14;
    COMPLEX128 = 15;
    BFLOAT16 = 16;
  }

  repeated int64 dims = 1;
  int32 data_type = 2;

  message Segment {
    int64 begin = 1;
    int64 end = 2;
  }
  Segment segment = 3;

  repeated float float_data = 4 [packed = true];
  repeated int32 int32_data = 5 [packed = true];
  repeated bytes string_data = 6;
  repeated int64 int64_data = 7 [packed = true];
  string name = 8;
  string doc_string = 12;
  bytes raw_data = 9;
  repeated StringStringEntryProto external_data = 13;

  enum DataLocation {
    DEFAULT = 0;
    EXTERNAL = 1;
  }
  DataLocation data_location = 14;

  repeated double double_data = 10 [packed = true];
  repeated uint64 uint64_data = 11 [packed = true];
}

message SparseTensorProto {
  TensorProto values = 1;
  TensorProto indices = 2;
  repeated int64 dims = 3;
}

message TensorShapeProto {
  message Dimension {
    oneof value {
      int64 dim_value = 1;
      string dim_param = 2;
    };
    string denotation = 3;
  };
  repeated Dimension dim = 1;
}

message TypeProto {
  message Tensor {
    int32 elem_type = 1;
    TensorShapeProto shape = 2;
  }

  message Sequence {
    TypeProto elem_type = 1;
  };

  message Map {
    int32 key_type = 1;
    TypeProto value_type = 2;
  };

  oneof value {
    Tensor tensor_type = 1;
    Sequence sequence_type = 4;
    Map map_type = 5;
  }

  string denotation = 6;
}

message OperatorSetIdProto {
  string domain = 1;
  int64 version = 2;
}

option optimize_for = LITE_RUNTIME;
`;

let root: protobuf.Root | null = null;

/** The parsed schema (parsed once per process). */
export function onnxRoot(): protobuf.Root {
  if (root === null) root = protobuf.parse(ONNX_PROTO3, { keepCase: true }).root;
  return root;
}

/** `onnx.ModelProto` of the schema. */
export function modelProtoType(): protobuf.Type {
  return onnxRoot().lookupType("onnx.ModelProto");
}

/** Names of the exported graph's input and outputs (onnx.ts). */
export const INPUT_NAME = "input";
/** Classifiers (task classification): softmax class probabilities [N, classes]. */
export const PROBABILITIES = "probabilities";
/** Autoencoders (task reconstruction): the reconstructed input [N, ...inputShape]. */
export const RECONSTRUCTION = "reconstruction";
/** Binary classifiers (task binary): P(label 1) [N, 1], the sigmoid output. */
export const PROBABILITY = "probability";
/** Regression (task regression): the predicted targets [N, ...outputShape]. */
export const PREDICTION = "prediction";

/** TensorProto.DataType values used by the exporter. */
export const DataType = { FLOAT: 1, UINT8: 2, INT8: 3, INT32: 6, INT64: 7 } as const;

/** AttributeProto.AttributeType values used by the exporter. */
export const AttrType = { FLOAT: 1, INT: 2, STRING: 3, TENSOR: 4, FLOATS: 6, INTS: 7, STRINGS: 8 } as const;
