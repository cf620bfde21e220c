from specdyn.cli import main

main()
