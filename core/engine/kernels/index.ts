/** Registers the training kernels the tfjs wasm backend lacks. Being implemented (see issue 2). */
export function registerWasmTrainingKernels(): void {}
