package main

import (
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/cmd/internal/cli"
)

func newImageCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "image", Short: "Import and manage guest images"}
	cmd.AddCommand(newImageBuild(g), newImageImport(g), newImageList(g), newImageShow(g), newImageDelete(g), newImageWarm(g))
	return cmd
}

func newImageImport(g *globals) *cobra.Command {
	var req api.ImportImageRequest
	cmd := &cobra.Command{
		Use:               "import NAME --kernel FILE [--initrd FILE] --rootfs FILE",
		Short:             "Import a kernel, optional initramfs and ext4 root filesystem as an image",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: noCompletion,
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Name = args[0]
			for _, p := range []*string{&req.Kernel, &req.Initrd, &req.Rootfs} {
				if *p == "" {
					continue
				}
				abs, err := filepath.Abs(*p)
				if err != nil {
					return err
				}
				*p = abs
			}
			im, err := g.client().ImportImage(cmd.Context(), req)
			if err != nil {
				return err
			}
			return renderImage(cmd.OutOrStdout(), g.output, im)
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Kernel, "kernel", "", "kernel: a bzImage (QEMU) or an ELF vmlinux (Firecracker, QEMU)")
	f.StringVar(&req.Initrd, "initrd", "", "initramfs (optional)")
	f.StringVar(&req.Rootfs, "rootfs", "", "ext4 root filesystem image")
	f.StringVar(&req.Cmdline, "cmdline", "", "extra kernel command line the image needs")
	_ = cmd.MarkFlagRequired("kernel")
	_ = cmd.MarkFlagRequired("rootfs")
	return cmd
}

func newImageList(g *globals) *cobra.Command {
	var quiet bool
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List images",
		Args:    cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ims, err := g.client().ListImages(cmd.Context())
			if err != nil {
				return err
			}
			if quiet {
				for _, im := range ims {
					fmt.Fprintln(cmd.OutOrStdout(), im.ID)
				}
				return nil
			}
			return renderImages(cmd.OutOrStdout(), g.output, ims)
		},
	}
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print only ids")
	return cmd
}

func newImageShow(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:               "show NAME",
		Aliases:           []string{"inspect"},
		Short:             "Show an image, its manifest and the VMs using it (-o json: every package)",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeImages(g, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			im, err := g.client().GetImage(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return renderImage(cmd.OutOrStdout(), g.output, im)
		},
	}
}

func newImageDelete(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:               "delete NAME",
		Aliases:           []string{"rm"},
		Short:             "Delete an image no VM uses",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeImages(g, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.client().DeleteImage(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), args[0])
			return nil
		},
	}
}

func newImageBuild(g *globals) *cobra.Command {
	var (
		req      api.BuildImageRequest
		size     string
		packages []string
	)
	cmd := &cobra.Command{
		Use:               "build [NAME]",
		Short:             "Build a Debian image (default: the default image VMs use when --image is not given)",
		Args:              cobra.MaximumNArgs(1),
		ValidArgsFunction: noCompletion,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				req.Name = args[0]
			}
			if size != "" {
				b, err := cli.ParseSize(size, 1<<20)
				if err != nil {
					return err
				}
				req.SizeBytes = b
			}
			req.Packages = packages
			prog := newStageProgress(cmd.ErrOrStderr())
			im, err := g.client().BuildImage(cmd.Context(), req, prog.Event)
			prog.Finish(err == nil)
			if err != nil {
				return err
			}
			return renderImage(cmd.OutOrStdout(), g.output, im)
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Release, "release", "bookworm", "Debian release (codename)")
	f.StringSliceVar(&packages, "packages", nil, "extra Debian packages, comma-separated")
	f.StringVar(&size, "size", "", "root filesystem size, e.g. 4G (default 2G)")
	return cmd
}
