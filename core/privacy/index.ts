export * from "./rdp";
export * from "./mechanism";
export * from "./accountant";
export * from "./dp";
