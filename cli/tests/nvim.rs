//! A real client: headless Neovim opens a broken recipe with `keel lsp`
//! attached, and we read back the diagnostics Neovim received.
//!
//! `.ci/run` installs Debian's `neovim` and sets `KEEL_REQUIRE_NVIM=1`, so in
//! CI a missing Neovim is a failure, not a skip.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SCRIPT: &str = r#"
local bin = os.getenv('KEEL_BIN')
local file = os.getenv('KEEL_FILE')
local out = os.getenv('KEEL_OUT')
vim.cmd('edit ' .. vim.fn.fnameescape(file))
local buf = vim.api.nvim_get_current_buf()
local client = vim.lsp.start_client({ name = 'keel', cmd = { bin, 'lsp' }, root_dir = vim.fn.fnamemodify(file, ':h') })
vim.lsp.buf_attach_client(buf, client)
local ok = vim.wait(20000, function() return #vim.diagnostic.get(buf) >= 2 end, 50)
local lines = {}
for _, d in ipairs(vim.diagnostic.get(buf)) do
  table.insert(lines, string.format('%d:%d:%s', d.lnum + 1, d.col + 1, (d.message:gsub('\n.*', ''))))
end
table.sort(lines)
if not ok then table.insert(lines, 'TIMEOUT') end
vim.fn.writefile(lines, out)
vim.lsp.stop_client(client)
vim.cmd('qa!')
"#;

fn nvim() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("nvim"))
        .find(|p| p.is_file())
}

#[test]
fn neovim_shows_keel_diagnostics() {
    let Some(nvim) = nvim() else {
        assert!(
            std::env::var_os("KEEL_REQUIRE_NVIM").is_none(),
            "KEEL_REQUIRE_NVIM is set but nvim is not on PATH"
        );
        eprintln!("skipped: nvim is not installed (CI installs it)");
        return;
    };
    let dir = std::env::temp_dir().join(format!("keel-nvim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("broken.recipe");
    std::fs::write(&file, "import std/grpo\nrecipe r extends grpo {\n    credit = mean(rewrd) over group\n    clip.eps_low = 1.5\n}\n").expect("write");
    let script = dir.join("check.lua");
    std::fs::write(&script, SCRIPT).expect("write script");
    let out = dir.join("diagnostics.txt");
    let mut child = Command::new(nvim)
        .args(["--headless", "-u", "NONE", "-i", "NONE", "-n", "-c"])
        .arg(format!("luafile {}", script.display()))
        .env("KEEL_BIN", env!("CARGO_BIN_EXE_keel"))
        .env("KEEL_FILE", &file)
        .env("KEEL_OUT", &out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nvim starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().ok().flatten().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("nvim did not finish in 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let got = std::fs::read_to_string(&out).expect("nvim wrote the diagnostics");
    assert_eq!(
        got.trim(),
        "3:19:cannot find `rewrd` (not defined)\n4:20:`clip.eps_low` is 1.5, but it must be in (0, 1] (= 1.5)",
        "diagnostics Neovim received"
    );
}
