/**
 * The aggregator's durable state lives in blobs (container `flotilla`, see docs/iothub-protocol.md). BlobStore is
 * the small surface the orchestration needs: whole-blob put/get with ETag conditions, prefix listing, delete, and
 * a read URL a device can download from.
 *
 * Conditions: `ifMatch: etag` fails unless the blob still has that ETag (optimistic concurrency for state
 * documents); `ifNoneMatch: "*"` fails if the blob exists (first writer wins, e.g. a chunk delivered twice). A
 * failed condition throws FlotillaError E_STORE_CONFLICT — the only error callers are expected to branch on.
 */
import { createHash, randomUUID } from "node:crypto";
import {
  BlobSASPermissions,
  ContainerClient,
  RestError,
  StorageSharedKeyCredential,
  type BlobRequestConditions,
} from "@azure/storage-blob";
import { FlotillaError, fail } from "../../../../core/errors";

export interface PutOptions {
  /** Write only if the blob's current ETag is this one. */
  readonly ifMatch?: string;
  /** "*": write only if the blob does not exist. */
  readonly ifNoneMatch?: "*";
}

export interface StoredBlob {
  readonly bytes: Uint8Array;
  readonly etag: string;
}

export interface BlobStore {
  /** Writes the whole blob; returns its new ETag. Throws E_STORE_CONFLICT when a condition fails. */
  put(name: string, bytes: Uint8Array, opts?: PutOptions): Promise<string>;
  get(name: string): Promise<StoredBlob | undefined>;
  exists(name: string): Promise<boolean>;
  /** Names starting with `prefix`, sorted. */
  list(prefix: string): Promise<string[]>;
  /** Like `list`, with each blob's last write time (ms since epoch): what an age-based sweep needs. */
  listInfo(prefix: string): Promise<BlobInfo[]>;
  /**
   * Deletes if present; returns whether it existed. With `ifMatch`, deletes only while the blob still has that
   * ETag: a changed blob throws E_STORE_CONFLICT (a missing one returns false).
   */
  delete(name: string, opts?: { readonly ifMatch?: string }): Promise<boolean>;
  /** A URL a device can GET the blob from for `readSasMinutes` minutes. */
  url(name: string, readSasMinutes: number): Promise<string>;
}

export interface BlobInfo {
  readonly name: string;
  /** Last write, ms since epoch. */
  readonly lastModified: number;
}

export const STORE_CONFLICT = "E_STORE_CONFLICT";

export function isConflict(e: unknown): boolean {
  return e instanceof FlotillaError && e.code === STORE_CONFLICT;
}

function checkName(name: string): void {
  if (typeof name !== "string" || name.length === 0 || name.length > 1024 || name.startsWith("/")) {
    fail("E_STORE_NAME", `invalid blob name '${String(name)}'`);
  }
}

/** The embedded default: a Map; ETags are random per write, like Azure's opaque ones. */
export class MemoryBlobStore implements BlobStore {
  private readonly blobs = new Map<string, StoredBlob & { readonly lastModified: number }>();
  /** `clock` (ms since epoch) dates each write, for listInfo. */
  constructor(
    private readonly baseUrl = "memory://flotilla",
    private readonly clock: () => number = Date.now,
  ) {}

  async put(name: string, bytes: Uint8Array, opts: PutOptions = {}): Promise<string> {
    checkName(name);
    const cur = this.blobs.get(name);
    if (opts.ifNoneMatch === "*" && cur) fail(STORE_CONFLICT, `blob '${name}' already exists`);
    if (opts.ifMatch !== undefined && (!cur || cur.etag !== opts.ifMatch)) {
      fail(STORE_CONFLICT, `blob '${name}' changed (etag ${opts.ifMatch} no longer current)`);
    }
    const etag = `"${randomUUID()}"`;
    this.blobs.set(name, { bytes: Uint8Array.from(bytes), etag, lastModified: this.clock() });
    return etag;
  }

  async get(name: string): Promise<StoredBlob | undefined> {
    const b = this.blobs.get(name);
    return b ? { bytes: Uint8Array.from(b.bytes), etag: b.etag } : undefined;
  }

  async exists(name: string): Promise<boolean> {
    return this.blobs.has(name);
  }

  async list(prefix: string): Promise<string[]> {
    return [...this.blobs.keys()].filter((k) => k.startsWith(prefix)).sort();
  }

  async listInfo(prefix: string): Promise<BlobInfo[]> {
    return (await this.list(prefix)).map((name) => ({
      name,
      lastModified: this.blobs.get(name)!.lastModified,
    }));
  }

  async delete(name: string, opts: { readonly ifMatch?: string } = {}): Promise<boolean> {
    const cur = this.blobs.get(name);
    if (cur && opts.ifMatch !== undefined && cur.etag !== opts.ifMatch)
      fail(STORE_CONFLICT, `blob '${name}' changed (etag ${opts.ifMatch} no longer current)`);
    return this.blobs.delete(name);
  }

  async url(name: string, readSasMinutes: number): Promise<string> {
    const expiry = Date.now() + readSasMinutes * 60_000;
    return `${this.baseUrl}/${name.split("/").map(encodeURIComponent).join("/")}?se=${expiry}`;
  }
}

export interface AzureBlobStoreOptions {
  /** Storage connection string with an account key (needed to sign read SAS URLs). */
  readonly connectionString: string;
  /** Default "flotilla". */
  readonly containerName?: string;
}

/** Parses AccountName/AccountKey out of a storage connection string (UseDevelopmentStorage=true included). */
function sharedKey(cs: string): StorageSharedKeyCredential | undefined {
  if (/UseDevelopmentStorage=true/i.test(cs)) {
    return new StorageSharedKeyCredential("devstoreaccount1", DEV_ACCOUNT_KEY);
  }
  const parts = new Map<string, string>();
  for (const p of cs.split(";")) {
    const i = p.indexOf("=");
    if (i > 0) parts.set(p.slice(0, i).trim(), p.slice(i + 1).trim());
  }
  const name = parts.get("AccountName");
  const key = parts.get("AccountKey");
  return name && key ? new StorageSharedKeyCredential(name, key) : undefined;
}

/** Azurite's well-known development account key (public, documented by Microsoft). */
export const DEV_ACCOUNT_KEY =
  "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

export function devStorageConnectionString(blobEndpoint: string): string {
  return (
    `DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=${DEV_ACCOUNT_KEY};` +
    `BlobEndpoint=${blobEndpoint.replace(/\/$/, "")};`
  );
}

/** Azure Blob Storage (or Azurite) through @azure/storage-blob. */
export class AzureBlobStore implements BlobStore {
  readonly container: ContainerClient;
  private readonly credential: StorageSharedKeyCredential | undefined;
  private ensured: Promise<void> | null = null;

  constructor(opts: AzureBlobStoreOptions) {
    this.container = new ContainerClient(opts.connectionString, opts.containerName ?? "flotilla");
    this.credential = sharedKey(opts.connectionString);
  }

  /** Creates the container if missing (once per instance). */
  ensureContainer(): Promise<void> {
    this.ensured ??= this.container.createIfNotExists().then(
      () => undefined,
      (e: unknown) => {
        this.ensured = null;
        throw e;
      },
    );
    return this.ensured;
  }

  async put(name: string, bytes: Uint8Array, opts: PutOptions = {}): Promise<string> {
    checkName(name);
    await this.ensureContainer();
    const conditions: BlobRequestConditions = {};
    if (opts.ifMatch !== undefined) conditions.ifMatch = opts.ifMatch;
    if (opts.ifNoneMatch !== undefined) conditions.ifNoneMatch = opts.ifNoneMatch;
    try {
      const r = await this.container.getBlockBlobClient(name).upload(bytes, bytes.byteLength, {
        conditions,
        blobHTTPHeaders: { blobContentType: contentType(name) },
      });
      return r.etag ?? fail("E_STORE_RESPONSE", `no ETag for '${name}'`);
    } catch (e) {
      if (e instanceof RestError && (e.statusCode === 412 || e.statusCode === 409)) {
        fail(STORE_CONFLICT, `blob '${name}': condition failed (${e.statusCode} ${e.code ?? ""})`, {
          cause: e,
        });
      }
      if (e instanceof RestError && e.statusCode === 404 && opts.ifMatch !== undefined) {
        fail(STORE_CONFLICT, `blob '${name}' no longer exists`);
      }
      throw e;
    }
  }

  async get(name: string): Promise<StoredBlob | undefined> {
    checkName(name);
    await this.ensureContainer();
    try {
      const blob = this.container.getBlobClient(name);
      const r = await blob.download();
      const chunks: Buffer[] = [];
      for await (const c of r.readableStreamBody as NodeJS.ReadableStream) {
        chunks.push(typeof c === "string" ? Buffer.from(c) : (c as Buffer));
      }
      const buf = Buffer.concat(chunks);
      return { bytes: new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength), etag: r.etag ?? "" };
    } catch (e) {
      if (e instanceof RestError && e.statusCode === 404) return undefined;
      throw e;
    }
  }

  async exists(name: string): Promise<boolean> {
    await this.ensureContainer();
    return this.container.getBlobClient(name).exists();
  }

  async list(prefix: string): Promise<string[]> {
    await this.ensureContainer();
    const out: string[] = [];
    for await (const b of this.container.listBlobsFlat({ prefix })) out.push(b.name);
    return out.sort();
  }

  async listInfo(prefix: string): Promise<BlobInfo[]> {
    await this.ensureContainer();
    const out: BlobInfo[] = [];
    for await (const b of this.container.listBlobsFlat({ prefix })) {
      out.push({ name: b.name, lastModified: b.properties.lastModified.getTime() });
    }
    return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  async delete(name: string, opts: { readonly ifMatch?: string } = {}): Promise<boolean> {
    await this.ensureContainer();
    try {
      const r = await this.container
        .getBlobClient(name)
        .deleteIfExists(opts.ifMatch !== undefined ? { conditions: { ifMatch: opts.ifMatch } } : {});
      return r.succeeded;
    } catch (e) {
      // If-Match on a blob that is gone may also answer 412 (Azurite does): gone is "did not exist".
      if (e instanceof RestError && e.statusCode === 412 && !(await this.exists(name))) return false;
      if (e instanceof RestError && e.statusCode === 412)
        fail(STORE_CONFLICT, `blob '${name}': condition failed (412 ${e.code ?? ""})`, { cause: e });
      throw e;
    }
  }

  async url(name: string, readSasMinutes: number): Promise<string> {
    if (!this.credential) {
      fail("E_STORE_SAS", "the storage connection string has no account key: cannot sign a read SAS");
    }
    const blob = this.container.getBlobClient(name);
    // generateSasUrl signs with the client's own StorageSharedKeyCredential (a connection-string client has one).
    return blob.generateSasUrl({
      permissions: BlobSASPermissions.parse("r"),
      startsOn: new Date(Date.now() - 5 * 60_000),
      expiresOn: new Date(Date.now() + readSasMinutes * 60_000),
    });
  }
}

function contentType(name: string): string {
  return name.endsWith(".json") ? "application/json" : "application/octet-stream";
}

/** sha256 hex of bytes. */
export function sha256Hex(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/** JSON document helpers over a BlobStore. */
export async function getJson<T>(
  store: BlobStore,
  name: string,
): Promise<{ value: T; etag: string } | undefined> {
  const b = await store.get(name);
  if (!b) return undefined;
  return { value: JSON.parse(Buffer.from(b.bytes).toString("utf8")) as T, etag: b.etag };
}

export function putJson(store: BlobStore, name: string, value: unknown, opts?: PutOptions): Promise<string> {
  return store.put(name, Buffer.from(JSON.stringify(value)), opts);
}

/**
 * Read-modify-write with ETag retry: `mutate` gets the current value (undefined if absent) and returns the new one,
 * or undefined to leave it unchanged. Retries on E_STORE_CONFLICT (another writer got in between).
 */
export async function updateJson<T>(
  store: BlobStore,
  name: string,
  mutate: (cur: T | undefined) => T | undefined,
  attempts = 20,
): Promise<T | undefined> {
  for (let i = 0; i < attempts; i++) {
    const cur = await getJson<T>(store, name);
    const next = mutate(cur?.value);
    if (next === undefined) return cur?.value;
    try {
      await putJson(store, name, next, cur ? { ifMatch: cur.etag } : { ifNoneMatch: "*" });
      return next;
    } catch (e) {
      if (!isConflict(e)) throw e;
      await new Promise((r) => setTimeout(r, 5 + Math.random() * 20 * (i + 1)));
    }
  }
  return fail(STORE_CONFLICT, `blob '${name}': gave up after ${attempts} conflicting writes`);
}
