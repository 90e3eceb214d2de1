from labctl_operator.main import main

main()
