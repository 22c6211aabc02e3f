//go:build ignore

// spinner.go draws spinner.gif, the busy indicator pages written for the
// Sage cell link to (/static/spinner.gif): eight dots on a circle, the lit
// one going round, fading behind it. Run it from this directory after a
// change: go run spinner.go (the output is committed, so builds need no Go
// step and stay byte-for-byte the same).
package main

import (
	"image"
	"image/color"
	"image/gif"
	"math"
	"os"
)

const (
	size   = 24
	dots   = 8
	radius = 8.0
	dotR   = 2.3
)

func main() {
	// Index 0 is transparent; 1..dots are the dot's shades, darkest first.
	pal := color.Palette{color.RGBA{}}
	for i := 0; i < dots; i++ {
		v := uint8(60 + i*24)
		pal = append(pal, color.RGBA{v, v, v, 255})
	}
	anim := &gif.GIF{LoopCount: 0}
	for f := 0; f < dots; f++ {
		img := image.NewPaletted(image.Rect(0, 0, size, size), pal)
		for d := 0; d < dots; d++ {
			a := 2 * math.Pi * float64(d) / dots
			cx := size/2 + radius*math.Sin(a)
			cy := size/2 - radius*math.Cos(a)
			shade := uint8(1 + (f-d+dots)%dots) // the lit dot is darkest
			for y := 0; y < size; y++ {
				for x := 0; x < size; x++ {
					if math.Hypot(float64(x)+0.5-cx, float64(y)+0.5-cy) <= dotR {
						img.SetColorIndex(x, y, shade)
					}
				}
			}
		}
		anim.Image = append(anim.Image, img)
		anim.Delay = append(anim.Delay, 10)
		anim.Disposal = append(anim.Disposal, gif.DisposalBackground)
	}
	out, err := os.Create("spinner.gif")
	if err != nil {
		panic(err)
	}
	if err := gif.EncodeAll(out, anim); err != nil {
		panic(err)
	}
	if err := out.Close(); err != nil {
		panic(err)
	}
}
