-- Keel for Neovim (0.7 or newer): `.recipe` files get the `keel` filetype and
-- `keel lsp`. Put this file on your runtimepath (e.g. ~/.config/nvim/plugin/)
-- or paste it into init.lua.
vim.cmd([[autocmd BufRead,BufNewFile *.recipe setfiletype keel]])
vim.api.nvim_create_autocmd('FileType', {
  pattern = 'keel',
  callback = function(args)
    local client = vim.lsp.start_client({
      name = 'keel',
      cmd = { 'keel', 'lsp' },
      root_dir = vim.fn.getcwd(),
    })
    if client then
      vim.lsp.buf_attach_client(args.buf, client)
    end
  end,
})
