// Builds the console into dist/ (git-ignored; `make install` runs it): one bundled,
// minified script and stylesheet, the page, and Swagger UI's assets for the gateway's
// offline /docs. Nothing is fetched at runtime from anywhere but the gateway.
import { build } from "esbuild";
import { cpSync, mkdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "dist");
rmSync(out, { recursive: true, force: true });
mkdirSync(join(out, "assets"), { recursive: true });

await build({
  entryPoints: { console: join(here, "src", "main.tsx") },
  bundle: true,
  minify: true,
  format: "esm",
  target: "es2022",
  jsx: "automatic",
  jsxImportSource: "preact",
  outdir: join(out, "assets"),
  legalComments: "none",
  logLevel: "warning",
});
cpSync(join(here, "src", "index.html"), join(out, "index.html"));
cpSync(join(here, "src", "favicon.svg"), join(out, "assets", "favicon.svg"));

// The API docs page for /docs (served by the gateway, gateway/console.py): our page and
// initializer (no inline script: the page's Content-Security-Policy allows none), and
// Swagger UI's bundle, stylesheet, icon and licence, all under docs/assets/.
const docs = join(out, "docs");
mkdirSync(join(docs, "assets"), { recursive: true });
await build({
  entryPoints: { docs: join(here, "src", "docs", "docs.ts") },
  bundle: true,
  minify: true,
  format: "iife",
  target: "es2022",
  outdir: join(docs, "assets"),
  legalComments: "none",
  logLevel: "warning",
});
const swagger = dirname(createRequire(import.meta.url).resolve("swagger-ui-dist/package.json"));
for (const name of ["swagger-ui-bundle.js", "swagger-ui-bundle.js.LICENSE.txt", "swagger-ui.css", "favicon-32x32.png"]) {
  cpSync(join(swagger, name), join(docs, "assets", name));
}
cpSync(join(here, "src", "docs", "index.html"), join(docs, "index.html"));
